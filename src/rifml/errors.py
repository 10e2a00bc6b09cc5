"""The one exception type for bad user input (caught once, in the CLI)."""


class RifmlInputError(Exception):
    """Input the user can fix: a missing file, a malformed catalog, an unusable table.

    The CLI prints the message as one line and exits with status 2.
    """
