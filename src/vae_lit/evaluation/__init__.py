"""Scoring a trained model: likelihood bounds, reconstructions, code use, sampler fits."""
