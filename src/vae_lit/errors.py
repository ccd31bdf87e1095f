"""The one exception type for bad user input: entry points print its message as one line, no traceback."""


class UserError(Exception):
    """A bad path, config value or input file. The message names the thing and the fix."""


def find_user_error(exc: BaseException | None) -> UserError | None:
    """Return the UserError behind `exc`, looking through wrappers such as Hydra's InstantiationException."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
