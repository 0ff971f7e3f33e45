"""The one exception type a user sees as a single line instead of a traceback."""


class UserError(Exception):
    """A mistake the user can fix: the message says what is wrong and what to do."""
