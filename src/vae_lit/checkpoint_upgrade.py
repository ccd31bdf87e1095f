"""Older checkpoint layouts to today's, so a model trained before a refactor still loads.

Layout 0 (the seed, before the ingredient split): `model.loss` (a NegativeELBO holding the
likelihood name, the Gaussian scale and free bits) and `model.kl_schedule`; a Gaussian's scale was
one scalar `loss.log_scale`. Today: `model.likelihood`, `model.objective` (with the KL schedule
and free bits) and `model.prior`, and one log-scale per channel under `likelihood.log_scale`.
"""

import copy
from typing import Any

import torch

from vae_lit.callbacks.run_config import CONFIG_KEY


def upgrade_model_config(model: dict[str, Any]) -> dict[str, Any]:
    """A layout-0 model config in today's layout; today's configs come back unchanged."""
    if "loss" not in model:
        return model
    model = copy.deepcopy(model)
    loss = model.pop("loss") or {}
    schedule = model.pop("kl_schedule", None)
    channels = model["net"]["channels"]
    if loss.get("likelihood", "bernoulli") == "gaussian":
        model["likelihood"] = {
            "_target_": "vae_lit.likelihoods.Gaussian",
            "channels": channels,
            "scale": loss.get("gaussian_scale", 0.1),
            "learn_scale": loss.get("learn_scale", False),
        }
    else:
        model["likelihood"] = {"_target_": "vae_lit.likelihoods.Bernoulli", "channels": channels}
    model["objective"] = {
        "_target_": "vae_lit.objectives.ELBO",
        "kl_schedule": schedule,
        "free_bits": loss.get("free_bits", 0.0),
    }
    model["prior"] = {
        "_target_": "vae_lit.priors.StandardNormal",
        "latent_dim": model["net"]["latent_dim"],
    }
    return model


def upgrade_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint with its config and weights in today's layout (a shallow copy)."""
    config = checkpoint.get(CONFIG_KEY) or {}
    model = config.get("model") or {}
    if "loss" not in model:
        return checkpoint
    checkpoint = dict(checkpoint)
    checkpoint[CONFIG_KEY] = {**config, "model": upgrade_model_config(model)}
    state = dict(checkpoint.get("state_dict") or {})
    log_scale = state.pop("loss.log_scale", None)
    if (
        log_scale is not None
        and "gaussian" in checkpoint[CONFIG_KEY]["model"]["likelihood"]["_target_"].lower()
    ):
        channels = checkpoint[CONFIG_KEY]["model"]["net"]["channels"]
        state["likelihood.log_scale"] = torch.as_tensor(log_scale).reshape(()).repeat(channels)
    checkpoint["state_dict"] = state
    return checkpoint
