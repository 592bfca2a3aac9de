"""User-facing errors.

Anything the user can fix (a bad path, a malformed file, an unknown model name) raises
`SegformerError` with a one-line message naming the file and the problem. The CLI prints that line
and exits non-zero without a traceback; library users catch it like any other exception.
"""


class SegformerError(Exception):
    """An error caused by the user's input, reported as one line."""

    def __init__(self, *args: object) -> None:
        # torch's DataLoader re-raises an exception of a worker process as ``type(err)(text)``, the text
        # holding the worker's whole traceback; the user's one line is its last line.
        if len(args) == 1 and isinstance(args[0], str) and "\nOriginal Traceback" in args[0]:
            args = (args[0].rstrip().splitlines()[-1].partition("SegformerError: ")[2] or args[0],)
        super().__init__(*args)
