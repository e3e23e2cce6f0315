"""The one exception type for mistakes a user can make (bad paths, options, files).

The CLI turns it into a single ``error: ...`` line and exit status 2."""


class UserError(Exception):
    """A problem caused by the user's input, reported without a traceback."""
