"""What a config read from a file (a checkpoint's embedded config, a model folder's config.json)
may build. Hydra's `instantiate` calls whatever `_target_` names, so a stranger's file could call
any importable function; these checks run first and refuse the file in one line.

A target is checked as text before anything is imported (importing a module runs its code), then
the object it names must be a class of our own or a torch optimizer or LR scheduler. Every
`_target_` counts, however deep (inside `_args_`, lists, `_recursive_: false` nodes), and an
interpolation is refused too: a resolver such as `oc.decode` could assemble a target only at
instantiation time, and vae-lit stores its configs resolved.
"""

from collections.abc import Iterator
from typing import Any

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from vae_lit.errors import UserError

OWN_PREFIX = "vae_lit."
OPTIM_PREFIXES = ("torch.optim.",)  # torch.optim.lr_scheduler.* included
MODEL_RULE = "vae_lit classes and torch.optim optimizers and LR schedulers"

# `eval` logs to the loggers a run trained with, read from its checkpoint: only the ones
# configs/logger/*.yaml ship, or shipped before (tests/test_checkpoint_trust.py checks the list).
LOGGER_TARGETS = frozenset(
    {
        "pytorch_lightning.loggers.CSVLogger",  # before AppendingCSVLogger
        "pytorch_lightning.loggers.TensorBoardLogger",
        "vae_lit.loggers.appending_csv.AppendingCSVLogger",
        "vae_lit.loggers.wandb_run.wandb_logger",
    }
)
LOGGER_RULE = "the loggers vae-lit ships (" + ", ".join(sorted(LOGGER_TARGETS)) + ")"


def walk(node: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """Every (dotted path, key, value) of a plain or OmegaConf tree, interpolations unresolved."""
    if isinstance(node, DictConfig | ListConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            yield child, key, value
            yield from walk(value, child)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            child = f"{path}[{i}]"
            yield child, i, value
            yield from walk(value, child)


def is_model_target(target: str) -> bool:
    """A class of vae_lit, or a torch optimizer or LR scheduler; nothing else, not even a function
    of ours (`vae_lit.sample.sample` would write a file wherever the config says)."""
    parts = target.split(".")
    if not all(part.isidentifier() and not part.startswith("_") for part in parts):
        return False  # no dunder walks such as `vae_lit.x.Thing.__init__.__globals__`
    if target.startswith(OWN_PREFIX):
        obj = get_object(target)
        module = getattr(obj, "__module__", "") or ""
        return isinstance(obj, type) and (module == "vae_lit" or module.startswith(OWN_PREFIX))
    if target.startswith(OPTIM_PREFIXES):
        obj = get_object(target)
        kinds = (torch.optim.Optimizer, LRScheduler, ReduceLROnPlateau)
        return isinstance(obj, type) and issubclass(obj, kinds)
    return False  # not imported at all


def check_config(config: Any, source: str, key: str, allowed: str = "model") -> None:
    """Refuse, in one line, a config from a file that holds an interpolation or would build
    anything but what `allowed` names: "model" (MODEL_RULE) or "logger" (exactly LOGGER_TARGETS).
    `source` names the file and `key` the config's place in it, for the message."""
    check_resolved(config, source, key)
    check_targets(config, source, key, allowed)


def check_targets(config: Any, source: str, key: str, allowed: str = "model") -> None:
    """check_config without the interpolation check, for a config whose interpolations were
    refused when it was read (the whole config `load_checkpoint` returns) or that is our own."""
    rule = MODEL_RULE if allowed == "model" else LOGGER_RULE
    for path, name, value in walk(config, key):
        if name != "_target_":
            continue
        if not isinstance(value, str):
            raise UserError(f"{source} is refused: {path} is {value!r}, not a class name")
        ok = value in LOGGER_TARGETS if allowed == "logger" else is_allowed_model_target(value)
        if not ok:
            raise UserError(
                f"{source} is refused: {path} asks to build {value}; a config read from a file "
                f"may only build {rule}"
            )


def check_resolved(config: Any, source: str, key: str = "") -> None:
    """Refuse any `${...}` in a config from a file: vae-lit writes its configs resolved."""
    for path, name, value in walk(config, key):
        if any(isinstance(text, str) and "${" in text for text in (name, value)):
            raise UserError(
                f"{source} is refused: {path} holds an interpolation ({value!r}); vae-lit stores "
                "its configs resolved, so this file was not written by vae-lit"
            )


def is_allowed_model_target(target: str) -> bool:
    try:
        return is_model_target(target)
    except Exception:  # no such module or attribute: not one of ours either
        return False
