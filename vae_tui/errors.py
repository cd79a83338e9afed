"""One exception type for everything a person can fix: the CLI prints its message as one line; and
the exit status a signal ends a run with."""

import signal

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}  # as a shell reports a process killed by it


class VaeTuiError(Exception):
    """A problem to report as a single line and a non-zero exit, never a traceback."""

    exit_code = 1


class ConfigError(VaeTuiError):
    """A bad option value: usage error, exit status 2 like any other bad command line."""

    exit_code = 2


def say_error(message: str) -> None:
    """The one form every user-facing failure takes: one line on stderr."""
    import sys

    print(f"vae-tui: error: {message}", file=sys.stderr, flush=True)
