"""Run plumbing: config checks, the Trainer, run dirs and resume, stops, reports, sweeps."""
