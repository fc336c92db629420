"""The one error a command raises to print a line and exit non-zero."""


class CliError(Exception):
    """A problem the person at the terminal can act on; printed as one line."""
