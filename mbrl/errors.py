"""The one exception type for mistakes a user can make (bad paths, options, files).

The CLI turns it into a single ``error: ...`` line and exit status 2."""


class UserError(Exception):
    """A problem caused by the user's input, reported without a traceback."""


def require_at_least(option: str, value: float, minimum: float) -> None:
    """UserError unless ``value >= minimum``; ``option`` as the user typed it (``--episodes``)."""
    if not value >= minimum:
        raise UserError(f"{option} must be at least {minimum}, got {value}")


def require_choice(kind: str, value: str, choices: list[str]) -> None:
    """UserError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise UserError(f"unknown {kind} {value!r}; available: {', '.join(choices)}")
