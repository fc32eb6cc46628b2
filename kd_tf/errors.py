"""kd_tf's error for bad user input.

The CLI prints an InputError (and an OSError: a missing file, a read-only folder) as one line and
exits 2; every other exception is a bug and keeps its traceback. It is a ValueError, so code and
tests that expect ValueError for a bad value keep working.
"""


class InputError(ValueError):
    """A value, file, folder, model or environment setting from the user that kd_tf cannot use;
    the message names it and says what is accepted."""
