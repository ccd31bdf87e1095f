"""The one exception type for bad user input: entry points print it as one line, no traceback."""

import difflib
import inspect
import re
import sys
from collections.abc import Callable
from types import FrameType
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
    """Hydra's multi-line "Error in call to target" as one line naming the config key, when what
    the target refused is clearly the config: an argument name it does not take or a required one
    left out, a value its own constructor rejected (a ValueError raised in the constructor, a
    number typed on the command line that does not parse), a ValueError or TypeError from a
    library given config values with no vae_lit code in between (Lightning's checks of Trainer
    arguments), a `_target_` that does not import, a network too large for memory.

    Any other TypeError or ValueError keeps its traceback. From the error alone, a bug in our
    constructors and a wrong-typed config value (`[4]` where a number belongs) found by code they
    call look the same, and hiding a bug costs more than showing a user a traceback whose last
    line names the value.
    """
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
    if type(cause).__name__ == "MisconfigurationException":
        return UserError(f"{key}: {text}; fix the values under {key}")
    name = target[1] if target else "the target"
    wrong = wrong_argument(cause, key, name) if isinstance(cause, TypeError) else None
    if wrong is not None or not isinstance(cause, TypeError | ValueError):
        return wrong
    checked = isinstance(cause, ValueError) and (
        raised_by_constructor(cause) or typed_on_command_line(cause)
    )
    if checked or not runs_our_code(cause):
        return UserError(f"{key}: {text}; fix the values under {key}")
    return None


# Python's own refusal of a call's arguments, before any of the callee's code runs
BINDING = re.compile(
    r"^(?P<function>[\w.]+)\(\) (?:"
    r"got an unexpected keyword argument '(?P<unexpected>\w+)'"
    r"|missing \d+ required (?:positional|keyword-only) arguments?: '(?P<missing>\w+)'"
    r"|got multiple values for argument|takes \d+ positional arguments?)"
)


def wrong_argument(cause: TypeError, key: str, target: str) -> UserError | None:
    """A config key the target does not take, or a required one left out, as one line; None for
    any other TypeError (a bug, or a wrong-typed value meeting code the target calls)."""
    match = BINDING.match(str(cause))
    # `ConvVAE.__init__()`: through a decorator (Lightning's Trainer) the call is a frame deeper
    function = match["function"].removesuffix(".__init__") if match else ""
    called = match and (not frames_below_call(cause) or function == target.rpartition(".")[2])
    if not called:  # a call made by the target's code, not Hydra's call of the target
        return None
    unexpected, missing = match["unexpected"], match["missing"]
    if unexpected:
        close = difflib.get_close_matches(unexpected, parameters(target), n=1)
        hint = f"did you mean {key}.{close[0]}?" if close else f"remove it (~{key}.{unexpected})"
        return UserError(f"{key}.{unexpected} is not an argument of {target}; {hint}")
    if missing:
        return UserError(f"{key}.{missing} is required by {target}; add +{key}.{missing}=<value>")
    return UserError(f"{key}: {' '.join(str(cause).split())}; fix the values under {key}")


def parameters(target: str) -> list[str]:
    """The argument names of the callable `target` names; none when it cannot be inspected."""
    from hydra.utils import get_object

    try:
        return list(inspect.signature(get_object(target)).parameters)
    except Exception:
        return []


def frames_below_call(cause: BaseException) -> list[FrameType]:
    """The frames `cause` passed through below Hydra's call of the target, innermost last: none
    when Python refused the call's arguments before the target's code ran."""
    frames, tb = [], cause.__traceback__
    tb = tb.tb_next if tb is not None else None  # the first frame is Hydra's, which made the call
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


def runs_our_code(cause: BaseException) -> bool:
    """Whether vae_lit code ran between Hydra's call and the error (else the config's values went
    straight into a library, which refused them)."""
    return any(
        frame.f_globals.get("__name__", "").startswith("vae_lit")
        for frame in frames_below_call(cause)
    )


def raised_by_constructor(cause: BaseException) -> bool:
    """Whether `cause` was raised by the target's own code checking its arguments: in the called
    function, or in an `__init__` of the object under construction (`super().__init__` included),
    not in code either of them called."""
    frames = frames_below_call(cause)
    if len(frames) <= 1:
        return True
    built, last = frames[0].f_locals.get("self"), frames[-1]
    return (
        built is not None
        and last.f_code.co_name == "__init__"
        and last.f_locals.get("self") is built
    )


def typed_on_command_line(cause: BaseException) -> bool:
    """A number that does not parse (`invalid literal for int()`) whose text the user typed as an
    override's value, wherever in the target's code the conversion happened."""
    found = re.search(
        r"(?:invalid literal for \w+\(\).*|could not convert string to \w+): '(.*)'$", str(cause)
    )
    return bool(found) and any(arg.partition("=")[2] == found[1] for arg in sys.argv[1:])


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
