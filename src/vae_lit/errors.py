"""The one exception type for bad user input: entry points print it as one line, no traceback."""

import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf.errors import MissingMandatoryValue

T = TypeVar("T")


class UserError(Exception):
    """A bad path, config value or input file. The message names the thing and the fix."""


def find_user_error(exc: BaseException | None) -> UserError | None:
    """The UserError behind `exc`, looking through wrappers such as InstantiationException."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        if isinstance(exc, MissingMandatoryValue):  # a `???` left in the config, e.g. data.root
            key = getattr(exc, "full_key", None) or "a required config value"
            return UserError(f"{key} is not set; add {key}=<value> to the command")
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


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
