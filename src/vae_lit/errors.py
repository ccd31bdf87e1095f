"""The one exception type for bad user input: entry points print it as one line, no traceback."""

import re
import sys
from collections.abc import Callable
from typing import TypeVar

from hydra.errors import InstantiationException
from omegaconf.errors import MissingMandatoryValue

T = TypeVar("T")


class UserError(Exception):
    """A bad path, config value or input file. The message names the thing and the fix."""


def find_user_error(exc: BaseException | None) -> UserError | None:
    """The UserError behind `exc`, looking through wrappers such as InstantiationException."""
    first, seen = exc, set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        if isinstance(exc, MissingMandatoryValue):  # a `???` left in the config, e.g. data.root
            key = getattr(exc, "full_key", None) or "a required config value"
            return UserError(f"{key} is not set; add {key}=<value> to the command")
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return refused_value(first)


def refused_value(exc: BaseException | None) -> UserError | None:
    """Hydra's multi-line "Error in call to target" for a value the target refused (a ValueError or
    TypeError, Lightning's MisconfigurationException, a wrong argument name, a `_target_` that does
    not import) as one line naming the config key."""
    if not isinstance(exc, InstantiationException):
        return None
    cause, message = exc.__cause__, str(exc)
    found = re.search(r"full_key: (\S+)", message)
    target = re.search(r"target '([^']+)'", message)
    # No full_key: an object built from its own group, as train builds the Trainer from `trainer`
    key = found[1] if found else target[1].rpartition(".")[2].lower() if target else "the config"
    if message.startswith("Error locating target") and target:
        return UserError(f"{key}._target_={target[1]} cannot be imported; check its spelling")
    text = " ".join(str(cause).split())
    if isinstance(cause, MemoryError) or "can't allocate memory" in text:
        return UserError(
            f"{key} does not fit in memory ({text}); lower data.image_size or the network's size"
        )
    refused = isinstance(cause, ValueError | TypeError)
    if not refused and type(cause).__name__ != "MisconfigurationException":
        return None
    return UserError(f"{key}: {text}; fix the values under {key}")


def exit_on_user_error(task: Callable[[], T]) -> T:
    """Run an entry point's work: a user's mistake becomes one line and exit code 2, while a bug
    keeps its traceback."""
    try:
        return task()
    except Exception as exc:
        error = find_user_error(exc)
        if error is None:
            raise
        print(f"vae-lit: error: {error}", file=sys.stderr)
        sys.exit(2)
