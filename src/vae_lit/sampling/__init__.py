"""Post-hoc samplers: densities fitted on a trained VAE's codes, drawn instead of the prior."""
