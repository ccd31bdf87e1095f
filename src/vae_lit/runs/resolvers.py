"""The OmegaConf resolvers the configs use: what the network's output layer must be, which only
the likelihood knows (a mixture of 10 logistics needs 100 maps for RGB, Bernoulli 3; a discrete
likelihood needs them in fp32, networks/output_conv.py).

    out_channels: ${decoder_channels:${model.likelihood}}
    fp32_output: ${likelihood_is_discrete:${model.likelihood}}
"""

from omegaconf import DictConfig, OmegaConf

from vae_lit.errors import UserError


def likelihood_class(likelihood: DictConfig) -> type:
    """The `Likelihood` subclass a `model.likelihood` config names, or a one-line error."""
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
    return cls


def decoder_channels(likelihood: DictConfig) -> int:
    options = {k: v for k, v in likelihood.items() if not str(k).startswith("_")}
    return likelihood_class(likelihood).decoder_channels(**options)


def likelihood_is_discrete(likelihood: DictConfig) -> bool:
    return likelihood_class(likelihood).kind == "discrete"


def register_resolvers() -> None:
    for name, resolver in (
        ("decoder_channels", decoder_channels),
        ("likelihood_is_discrete", likelihood_is_discrete),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
