"""Older checkpoint layouts to today's, so a model trained before a refactor still loads.

Layout 0 (the seed, before the ingredient split): `model.loss` (a NegativeELBO holding the
likelihood name, the Gaussian scale and free bits) and `model.kl_schedule`; a Gaussian's scale was
one scalar `loss.log_scale`. Today: `model.likelihood`, `model.objective` (with the KL schedule
and free bits) and `model.prior`, and one log-scale per channel under `likelihood.log_scale`.

Layout 1 (before the package was laid out by concern, 2026-12): the same configs with the flat
module paths (`vae_lit.lit_module.VAELitModule`, `vae_lit.models.ConvVAE`, ...); every `_target_`
is mapped to where its class lives today (`MOVED_MODULES`) before the config is checked or built.
"""

import copy
from typing import Any

import torch

from vae_lit.persistence.file_layout import CONFIG_KEY

# old module path -> today's; a target `<old>.<Class>` becomes `<new>.<Class>`
MOVED_MODULES = {
    "vae_lit.lit_module": "vae_lit.model.vae_module",
    "vae_lit.vq_lit_module": "vae_lit.model.vq_module",
    "vae_lit.code_prior": "vae_lit.model.code_prior",
    "vae_lit.likelihoods": "vae_lit.model.likelihoods",
    "vae_lit.objectives": "vae_lit.model.objectives",
    "vae_lit.priors": "vae_lit.model.priors",
    "vae_lit.kl_schedule": "vae_lit.model.kl_schedule",
    "vae_lit.models": "vae_lit.networks",
}
# classes whose old module was split: old target -> today's
MOVED_CLASSES = {
    "vae_lit.samplers.GaussianMixture": "vae_lit.sampling.gmm.GaussianMixture",
    "vae_lit.samplers.TwoStageVAE": "vae_lit.sampling.two_stage.TwoStageVAE",
    "vae_lit.loggers.AppendingCSVLogger": "vae_lit.loggers.appending_csv.AppendingCSVLogger",
    "vae_lit.loggers.wandb_logger": "vae_lit.loggers.wandb_run.wandb_logger",
    "vae_lit.code_prior.PriorSampleGrid": "vae_lit.callbacks.image_grids.PriorSampleGrid",
}


def moved_target(target: Any) -> Any:
    """Where a `_target_` written before the layout by concern lives today (others unchanged)."""
    if not isinstance(target, str) or not target.startswith("vae_lit."):
        return target
    if target in MOVED_CLASSES:
        return MOVED_CLASSES[target]
    module, _, name = target.rpartition(".")
    for old, new in MOVED_MODULES.items():
        if module == old or module.startswith(old + "."):
            return new + module[len(old) :] + "." + name
    return target


def with_moved_targets(node: Any) -> Any:
    """A copy of a plain config tree with every `_target_` mapped by `moved_target`."""
    if isinstance(node, dict):
        return {
            key: moved_target(value) if key == "_target_" else with_moved_targets(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [with_moved_targets(value) for value in node]
    return node


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
            "_target_": "vae_lit.model.likelihoods.Gaussian",
            "channels": channels,
            "scale": loss.get("gaussian_scale", 0.1),
            "learn_scale": loss.get("learn_scale", False),
        }
    else:
        model["likelihood"] = {
            "_target_": "vae_lit.model.likelihoods.Bernoulli",
            "channels": channels,
        }
    model["objective"] = {
        "_target_": "vae_lit.model.objectives.ELBO",
        "kl_schedule": schedule,
        "free_bits": loss.get("free_bits", 0.0),
    }
    model["prior"] = {
        "_target_": "vae_lit.model.priors.StandardNormal",
        "latent_dim": model["net"]["latent_dim"],
    }
    return model


def upgrade_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint with its config and weights in today's layout (a shallow copy)."""
    checkpoint = dict(checkpoint)
    config = with_moved_targets(checkpoint.get(CONFIG_KEY) or {})
    checkpoint[CONFIG_KEY] = config
    model = config.get("model") or {}
    if "loss" not in model:
        return checkpoint
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
