"""The one OmegaConf resolver the configs use: how many maps the decoder must output, which only
the likelihood knows (a mixture of 10 logistics needs 100 for RGB, Bernoulli 3).

    out_channels: ${decoder_channels:${model.likelihood}}
"""

from omegaconf import DictConfig, OmegaConf

from vae_lit.errors import UserError


def decoder_channels(likelihood: DictConfig) -> int:
    from hydra.utils import get_class

    from vae_lit.model.likelihoods import Likelihood

    target = likelihood.get("_target_", "")
    try:
        cls = get_class(target)
    except Exception:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, Likelihood)):
        raise UserError(
            f"model.likelihood._target_={target!r} is not a vae-lit likelihood; choose "
            "model/likelihood=bernoulli|gaussian|discretized_logistic|discretized_logistic_mixture"
        )
    options = {k: v for k, v in likelihood.items() if not str(k).startswith("_")}
    return cls.decoder_channels(**options)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("decoder_channels"):
        OmegaConf.register_new_resolver("decoder_channels", decoder_channels)
