"""Config values a user can get wrong, each refused in one line naming the key and the fix, before
any data is read or any file written; and Hydra's own config errors (a typo in a key, an unknown
config group option) as one line too.

The checks are generic: a rule per key path, applied when the composed config has that key, so a
key that moves to another config group moves here as a path, not as code.
"""

import difflib
import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any, get_args

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from lightning_fabric.plugins.precision.precision import (
    _PRECISION_INPUT_INT,
    _PRECISION_INPUT_STR,
    _PRECISION_INPUT_STR_ALIAS,
)
from omegaconf import DictConfig, ListConfig, OmegaConf

from vae_lit.errors import UserError, find_user_error

Rule = Callable[[Any], str | None]  # a value -> what it must be, or None when it is fine


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_number(value: Any) -> str | None:
    if is_number(value) and math.isfinite(value) and value > 0:
        return None
    return "must be a positive number, e.g. 1e-3"


def non_negative_number(value: Any) -> str | None:
    if is_number(value) and math.isfinite(value) and value >= 0:
        return None
    return "must be a number >= 0"


def non_negative_or_inf(value: Any) -> str | None:
    if is_number(value) and not math.isnan(value) and value >= 0:
        return None
    return "must be a number >= 0"


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def positive_int(value: Any) -> str | None:
    return None if is_int(value) and value > 0 else "must be a positive integer"


def non_negative_int(value: Any) -> str | None:
    return None if is_int(value) and value >= 0 else "must be an integer >= 0"


def optional(rule: Rule) -> Rule:
    def check(value: Any) -> str | None:
        problem = None if value is None else rule(value)
        return f"{problem}, or null" if problem else None

    return check


def auto_or(rule: Rule) -> Rule:
    def check(value: Any) -> str | None:
        problem = None if value == "auto" else rule(value)
        return f"{problem}, or auto" if problem else None

    return check


def positive_ints(value: Any) -> str | None:
    if isinstance(value, list | tuple | ListConfig) and value and all(is_int(v) for v in value):
        if all(v > 0 for v in value):
            return None
    return "must be a list of positive integers, e.g. [32,64,128]"


MAX_IMAGE_SIZE = 4096  # 100000 px would ask for terabytes before the first error


def image_size(value: Any) -> str | None:
    if is_int(value) and 0 < value <= MAX_IMAGE_SIZE:
        return None
    if is_int(value) and value > MAX_IMAGE_SIZE:
        return f"is too large for any memory (model and images); use at most {MAX_IMAGE_SIZE}"
    return "must be a positive integer"


def seed(value: Any) -> str | None:
    if value is None or is_int(value):
        return None
    return "must be an integer, or null for a random run"


def max_epochs(value: Any) -> str | None:
    if value is None or (is_int(value) and (value > 0 or value == -1)):
        return None
    if value == 0:
        return "trains nothing; give a positive number of epochs (-1: no limit, with max_steps)"
    return "must be a positive integer (-1: no limit, with trainer.max_steps)"


def max_steps(value: Any) -> str | None:
    if value is None or (is_int(value) and (value > 0 or value == -1)):
        return None
    return "must be a positive integer, or -1 for no limit"


def fraction(value: Any) -> str | None:
    return None if is_number(value) and 0 <= value < 1 else "must be a number in [0, 1)"


def sanity_steps(value: Any) -> str | None:
    if is_int(value) and value >= -1:
        return None
    return "must be an integer >= 0 (-1: the whole validation split)"


PRECISIONS = (
    "auto",  # resolved for the hardware by vae_lit.runs.trainer
    *get_args(_PRECISION_INPUT_STR),
    *get_args(_PRECISION_INPUT_STR_ALIAS),
    *get_args(_PRECISION_INPUT_INT),
)


# Half-precision weights: Lightning casts the model but not our uint8 batches, which become fp32
# images on the device, so the first convolution meets fp32 input with bf16/fp16 weights.
HALF_WEIGHTS = ("16-true", "bf16-true", "transformer-engine", "transformer-engine-float16")


def precision(value: Any) -> str | None:
    if str(value) in HALF_WEIGHTS:
        return (
            "keeps the weights in half precision, which this model does not run; use auto, "
            "bf16-mixed or 16-mixed"
        )
    if value in PRECISIONS or str(value) in map(str, PRECISIONS):
        return None
    return "is unknown; use one of: auto, 32-true, bf16-mixed, 16-mixed, 64-true"


# Key path -> rule. Paths that the composed config lacks are skipped (another model, an older or
# newer config layout), so both the old and the new home of a moved key can stand here.
RULES: dict[str, Rule] = {
    "seed": seed,
    "model.optimizer.lr": positive_number,
    "model.optimizer.weight_decay": non_negative_number,
    "model.optimizer.eps": optional(positive_number),
    "model.net.latent_dim": positive_int,
    "model.net.hidden_channels": positive_ints,
    "model.objective.free_bits": non_negative_number,
    "model.loss.free_bits": non_negative_number,
    "model.objective.kl_schedule.beta": non_negative_or_inf,
    "model.kl_schedule.beta": non_negative_or_inf,
    "model.objective.kl_schedule.warmup_steps": non_negative_int,
    "model.kl_schedule.warmup_steps": non_negative_int,
    "data.image_size": image_size,
    "data.batch_size": positive_int,
    "data.num_images": optional(positive_int),
    "data.val_fraction": fraction,
    "data.test_fraction": fraction,
    "trainer.max_epochs": max_epochs,
    "trainer.max_steps": max_steps,
    "trainer.min_epochs": optional(non_negative_int),
    "trainer.precision": precision,
    "trainer.log_every_n_steps": positive_int,
    "trainer.num_sanity_val_steps": optional(sanity_steps),
    "trainer.check_val_every_n_epoch": optional(positive_int),
    "trainer.gradient_clip_val": optional(non_negative_number),
    "model.objective.k": positive_int,
    "model.likelihood.num_components": positive_int,
    "model.likelihood.learn_scale": boolean,
    "model.net.quantizer.num_codes": positive_int,
    "model.prior.num_pseudo_inputs": positive_int,
    "model.prior.num_components": positive_int,
    "eval_after_train.k": positive_int,
    "eval_after_train.max_decodes": auto_or(positive_int),
}
# The same value in two places that must agree: (key, the key whose value it must equal, why).
SAME_AS = (
    ("model.prior.image_size", "data.image_size", "the VampPrior's pseudo-inputs are images"),
    ("model.prior.channels", "data.channels", "the VampPrior's pseudo-inputs are images"),
)
# Objectives that compare codes within a batch: one image per batch gives them nothing to compare.
BATCH_OBJECTIVES = ("InfoVAE", "BetaTCVAE", "DIPVAE")


def not_given(cfg: DictConfig, key: str) -> bool:
    """A required path left out: `???`, `ckpt=null`, or `ckpt=` (make eval without CKPT), which
    would otherwise read as the current folder."""
    if OmegaConf.is_missing(cfg, key):
        return True
    value = cfg.get(key)
    return value is None or (isinstance(value, str) and not value.strip())


# What `vae_lit.eval` takes under `eval.`: checked before the model is read, not after the work.
EVAL_RULES: dict[str, Rule] = {
    "eval.k": positive_int,
    "eval.max_decodes": auto_or(positive_int),
    "eval.batch_size": optional(positive_int),
    "eval.active_threshold": non_negative_number,
    "eval.mig_bins": positive_int,
    "eval.prior_samples": positive_int,
    "seed": non_negative_int,
}


def check_rules(cfg: DictConfig, rules: dict[str, Rule]) -> None:
    """Raise UserError for the first key of `rules` that the config sets to a value its rule
    refuses; keys the config lacks are not checked."""
    for key, rule in rules.items():
        if OmegaConf.select(cfg, key, default="???missing") == "???missing":
            continue
        value = OmegaConf.select(cfg, key)
        problem = rule(value)
        if problem:
            raise UserError(f"{key}={shown(value)} {problem}")


def check_eval_options(cfg: DictConfig) -> None:
    """Raise UserError for the first `eval.*` value (or sampler name) the evaluation cannot use."""
    check_rules(cfg, EVAL_RULES)
    known = list((cfg.get("samplers") or {}).keys())
    for name in cfg.eval.get("samplers") or []:
        if name not in known:
            raise UserError(
                f"eval.samplers: {shown(name)} is not a sampler; use some of: {', '.join(known)}"
            )


def shown(value: Any) -> str:
    """A value as it would be typed on the command line."""
    if isinstance(value, str):
        return value if value else "''"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return str(value).replace(" ", "")


def nan_values(node: Any, path: str = "") -> list[str]:
    """Paths of every NaN in a config: never a meaningful setting (a NaN free_bits turns the floor
    off silently, a NaN beta makes every loss NaN)."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in nan_values(v, f"{path}.{k}" if path else k)]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in nan_values(v, f"{path}[{i}]")]
    return [path] if isinstance(node, float) and math.isnan(node) else []


def check_config(cfg: DictConfig) -> None:
    """Raise UserError for the first value no run can use. Reads no data and writes nothing."""
    check_rules(cfg, RULES)
    for key, other, why in SAME_AS:
        value = OmegaConf.select(cfg, key, default=None)
        wanted = OmegaConf.select(cfg, other, default=None)
        if value is not None and wanted is not None and value != wanted:
            raise UserError(
                f"{key}={shown(value)} must equal {other}={shown(wanted)} ({why}); leave {key} "
                f"to its default, ${{{other}}}"
            )
    objective = str(OmegaConf.select(cfg, "model.objective._target_", default="") or "")
    batch_size = OmegaConf.select(cfg, "data.batch_size", default=None)
    if objective.endswith(BATCH_OBJECTIVES) and is_int(batch_size) and batch_size < 2:
        name = objective.rsplit(".", 1)[-1]
        raise UserError(
            f"data.batch_size={batch_size} is too small for {name}, which compares the codes "
            "within a batch; use data.batch_size=2 or more (32 or more for a useful estimate)"
        )
    check_iwae_memory(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    sections = {k: resolved[k] for k in ("data", "model", "trainer", "callbacks") if k in resolved}
    for path in nan_values(sections):
        raise UserError(f"{path}=nan is not a number; give it a finite value")


def machine_memory() -> int:
    """Bytes one step may use at most: the GPU's memory when there is one, else the RAM."""
    import torch

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if torch.cuda.is_available():
        return max(ram, torch.cuda.get_device_properties(0).total_memory)
    return ram


def check_iwae_memory(cfg: DictConfig) -> None:
    """IWAE decodes k samples of every image at once: `k=100000` asks for terabytes, and ran
    out of memory only after the data was read. A lower bound of one step's activations (the
    images, each level of the decoder, forward and backward) that no machine here holds is
    refused."""
    objective = str(OmegaConf.select(cfg, "model.objective._target_", default="") or "")
    k = OmegaConf.select(cfg, "model.objective.k", default=None)
    values = [
        OmegaConf.select(cfg, f"data.{key}", default=None)
        for key in ("batch_size", "image_size", "channels")
    ]
    hidden = OmegaConf.select(cfg, "model.net.hidden_channels", default=None) or []
    if not objective.endswith("IWAE") or not all(is_int(v) for v in [k, *values]):
        return
    batch_size, size, channels = values
    per_image = channels * size * size + sum(
        int(c) * (size // 2 ** (i + 1)) ** 2 for i, c in enumerate(hidden) if is_int(c)
    )
    needed = 3 * 4 * k * batch_size * per_image  # float32 activations, gradients, slack
    available = machine_memory()
    if needed > available:
        raise UserError(
            f"model.objective.k={k} decodes k x data.batch_size={batch_size} images at once: at "
            f"least {needed / 2**30:.0f} GiB a step, more than this machine's "
            f"{available / 2**30:.0f} GiB; lower model.objective.k or data.batch_size"
        )


def closest_key(exc: BaseException) -> str | None:
    """For `a.b.typo=1`: 'a.b.typo is not a config key; did you mean a.b.type?'."""
    cause = exc.__cause__
    key, full_key = getattr(cause, "key", None), getattr(cause, "full_key", None)
    parent = getattr(cause, "parent_node", None)
    if not isinstance(key, str) or not full_key or not isinstance(parent, DictConfig):
        return None
    keys = [str(k) for k in parent.keys() if not str(k).startswith("_")]
    prefix = full_key[: -len(key)]
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
    if match:
        return f"{full_key} is not a config key; did you mean {prefix}{match[0]}?"
    return (
        f"{full_key} is not a config key; the keys there are: {', '.join(keys)} "
        f"(+{full_key}=... adds a new one)"
    )


def config_error(exc: BaseException) -> UserError | None:
    """Hydra's multi-line report of a bad command line, as one line."""
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, name = exc.missing_cfg_file.rpartition("/")
        options = ", ".join(exc.options or [])
        if group and options:
            return UserError(f"{group}={name} is not a config; use one of: {options}")
        return UserError(f"config {exc.missing_cfg_file} was not found")
    if isinstance(exc, ConfigCompositionException):
        found = closest_key(exc)
        if found:
            return UserError(found)
    if isinstance(exc, OverrideParseException):
        reason = str(exc).split("\n")[0]
        bad = unparsable_override(sys.argv[1:])
        where = f"cannot read the override {bad!r}" if bad else "cannot read an override"
        return UserError(f"{where} ({reason}); see `--help` for the syntax of key=value")
    if isinstance(exc, ConfigCompositionException):
        return UserError(" ".join(str(exc).split("\n")[:2]).strip())
    return None


def unparsable_override(args: list[str]) -> str | None:
    """The first command-line override Hydra's grammar rejects."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for arg in args:
        if arg.startswith("-"):
            continue
        try:
            parser.parse_override(arg)
        except Exception:
            return arg
    return None


def run_cli(main: Callable[[], Any], model_data: bool = False) -> Any:
    """Run a Hydra entry point so that any mistake on its command line, found while composing the
    config or later, ends in one line (`vae-lit: error: ...`) and exit code 2.

    `model_data`: the entry point reads a trained model's data (eval, sample, train_prior), whose
    config is the model's, not in the composed config; `data.root=/new` is then passed on as
    `++data.root=/new` (set, or add), and the entry point lays it over the model's data config."""
    if model_data:
        sys.argv[1:] = [
            f"++{arg}" if re.match(r"data\.[\w.]+=", arg) else arg for arg in sys.argv[1:]
        ]
    previous = os.environ.get("HYDRA_FULL_ERROR")
    if previous is None:
        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises, instead of printing its own report
    try:
        return main()
    except Exception as exc:
        error = config_error(exc) or find_user_error(exc)
        if error is None:
            raise
        print(f"vae-lit: error: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
