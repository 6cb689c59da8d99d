"""The one exception type for bad user input.

Raise ``UserError`` with a message that names the file, field or value, says
what is wrong and what to do. The CLI prints it on one line (``msreid SUB:
error: ...``) and exits with status 2; no traceback.
"""


class UserError(Exception):
    """Bad input from the user (file, field or value), with what to do about it."""
