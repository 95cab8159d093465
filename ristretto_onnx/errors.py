"""User-facing errors.

Anything a user can cause (a bad format string, a missing file, a model we cannot handle) raises
:class:`RistrettoError`; the CLI prints its message as one line and exits non-zero, so a bad input
never shows a traceback. Internal bugs stay ordinary exceptions.
"""


class RistrettoError(Exception):
    """A problem with the user's input or environment, reported as one line."""


class FormatError(RistrettoError, ValueError):
    """A number format string or parameter set that does not describe a valid format."""
