"""The one error type of the command line: a message a person can act on; exit status 1."""


class CliError(Exception):
    """A failure to report as `fengqiao: <message>` on stderr, exit status 1 (no traceback)."""
