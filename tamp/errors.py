"""One exception type for user-facing problems: the CLI prints its message as a single line."""


class TampError(Exception):
    """Bad input or an unmet precondition; the message says what to do."""
