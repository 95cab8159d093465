"""User-facing errors.

Anything a user can cause (a bad format string, a missing file, a model we cannot handle) raises
:class:`RistrettoError`; the CLI prints its message as one line and exits non-zero, so a bad input
never shows a traceback. Internal bugs stay ordinary exceptions.

Exit codes (docs/ERRORS.md): 2 for a wrong command line (:class:`UsageError`: a bad option value,
an unknown scheme or format, a wrong argument count, an output that exists without ``--force`` or
is the input), 1 for every other failure (the files: models, data, folders), 130/143 when
interrupted by SIGINT/SIGTERM (:class:`Interrupted`).
"""

from __future__ import annotations


class RistrettoError(Exception):
    """A problem with the user's input or environment, reported as one line (exit 1)."""

    exit_code = 1


class UsageError(RistrettoError, ValueError):
    """The command line (or an API argument) itself is wrong: fix the call, not the files (exit 2)."""

    exit_code = 2


class FormatError(RistrettoError, ValueError):
    """A number format string or parameter set that does not describe a valid format."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; raised from the signal handler so ``finally`` blocks clean up.

    A BaseException (like KeyboardInterrupt) so that no ``except Exception`` swallows it.
    """

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
