"""Files a model lives in: checkpoints, model folders, the config allowlist, atomic writes."""
