"""User-facing errors.

Anything the user can fix (a bad path, a malformed file, an unknown model name) raises
`SegformerError` with a one-line message naming the file and the problem. The CLI prints that line
and exits non-zero without a traceback; library users catch it like any other exception.
"""


class SegformerError(Exception):
    """An error caused by the user's input, reported as one line."""
