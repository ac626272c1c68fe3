"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class FeedrankError(Exception):
    """A failure with a reason a user can act on (bad input, refused model, broken gate)."""
