"""The exception types feedrank raises with a reason a user can act on.

``feedrank.cli_runner`` turns them into one-line messages and exit codes.
"""

from __future__ import annotations


class FeedrankError(Exception):
    """A failure with a reason a user can act on (bad input, refused model, broken gate)."""


class ConfigError(FeedrankError):
    """The configuration cannot be read (profile file, YAML syntax, setting names)."""
