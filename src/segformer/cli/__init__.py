"""The `segformer` command line. Each subcommand lives in its own module of this package and is one
call into the library; this file only dispatches and turns `SegformerError` into a one-line message."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import sys
import warnings
from typing import TextIO

from ..errors import SegformerError

# Modules of this package that define `add_parser(subparsers)`; listed order is the --help order.
COMMANDS = [
    "demo", "data", "train", "evaluate", "predict", "export", "info", "convert", "experiment", "attention",
    "report", "bench", "serve", "push", "distill",
]  # fmt: skip


def add_set_option(parser: argparse.ArgumentParser, metavar: str, help: str) -> None:
    """The repeatable ``--set KEY=VALUE`` option of the commands that build a config, collected into
    ``args.overrides`` (parsed by `segformer.config.parse_overrides`)."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar=metavar, help=help)


def add_postprocess_options(parser: argparse.ArgumentParser) -> None:
    """``--postprocess`` / ``--min-area`` of the commands that turn logits into masks (eval, predict,
    export); unset, they leave the model's own settings in force."""
    from ..config import POSTPROCESS_MODES
    from ..inference.settings import DEFAULT_MIN_AREA
    from .types import unit_interval

    parser.add_argument(
        "--postprocess",
        choices=POSTPROCESS_MODES,
        help="small-regions: relabel regions smaller than --min-area to the label around them "
        "(default: the model's, else none)",
    )
    parser.add_argument(
        "--min-area",
        type=unit_interval,
        help=f"smallest region small-regions keeps, a fraction of the image (default {DEFAULT_MIN_AREA})",
    )


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` of the commands that compute; `main` applies it (`segformer.runtime.set_threads`)
    before the command runs and says what it chose."""
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU compute threads (default: as many as there are idle cores when the command starts)",
    )


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="segformer",
        description="SegFormer and MicroSegFormer for semantic segmentation: "
        "train, evaluate, predict, convert, export. Run `segformer COMMAND --help` for details.",
    )
    parser.add_argument("--version", action="version", version=f"segformer {__version__}")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="show the full traceback on errors (or set SEGFORMER_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line read like its errors: one line, no source excerpt."""
    return f"segformer: warning: {message}\n"


def _close_progress_bars() -> None:
    """Clear the progress bars an error left open (the traceback still holds their loops), so that
    the error starts its own line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _quiet_after_interrupt() -> None:
    """Stop further signal handlers from raising while an interrupt is being reported.

    Ctrl-C reaches the DataLoader workers too; one that dies of it while starting exits with an error,
    and PyTorch's SIGCHLD handler then raises "worker exited unexpectedly" inside our `except` block,
    turning a clean interrupt into a traceback. The loop retries until both handlers are reset. Only
    for a command-line process, which exits right after."""
    import signal

    while True:
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return
        except (KeyboardInterrupt, RuntimeError):
            continue
        except ValueError:  # not the main thread: nothing to reset
            return


class _TolerantStream(io.TextIOBase):
    """stdout / stderr that a closed terminal or a broken pipe (``segformer ... | head -1``) cannot stop:
    a failed write is swallowed, and the descriptor is pointed at the null device so that the
    interpreter's own flush at exit stays quiet. The work goes on; the exit code still tells."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self.broken = stream is None

    def _break(self) -> None:
        self.broken = True
        try:
            fd = self._stream.fileno()  # type: ignore[union-attr]
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self._stream.write(text)  # type: ignore[union-attr]
            except (OSError, ValueError):
                self._break()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()  # type: ignore[union-attr]
            except (OSError, ValueError):
                self._break()

    def isatty(self) -> bool:
        try:
            return not self.broken and self._stream.isatty()  # type: ignore[union-attr]
        except (OSError, ValueError):
            return False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        if self._stream is None:
            raise io.UnsupportedOperation("no stream")
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "errors", None) or "strict"


def _say(text: str) -> None:
    """Write `text` to stderr whatever state it is in."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


def _interrupted_while_starting(signum: int, frame: object) -> None:
    """Ctrl-C before the command has started (imports of torch take seconds): nothing is written yet,
    so leave at once, with the same line and code as an interrupted command."""
    _say("segformer: interrupted\n")
    os._exit(130)


def _prepare_process() -> None:
    """For a command-line process, before anything heavy is imported: Ctrl-C leaves cleanly, and a
    closed or broken stdout / stderr never stops the work."""
    import signal

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, _interrupted_while_starting)
    if not isinstance(sys.stdout, _TolerantStream):
        sys.stdout = _TolerantStream(sys.stdout)
    if not isinstance(sys.stderr, _TolerantStream):
        sys.stderr = _TolerantStream(sys.stderr)


def _start_command() -> None:
    """From here on Ctrl-C raises `KeyboardInterrupt` (the writers hold it until their file is in place)."""
    import signal

    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    """The `segformer` console script (and ``python -m segformer``): every failure is one line on
    stderr and an exit code (1 error, 2 usage, 130 interrupted)."""
    command_line = argv is None
    if command_line:
        _prepare_process()
    command = None
    try:
        from ..runtime import tune_cpu_allocator

        tune_cpu_allocator()  # before the first large tensor (see segformer.runtime)
        parser = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        debug = args.traceback or os.environ.get("SEGFORMER_DEBUG") == "1"
        if not debug:
            warnings.formatwarning = _one_line_warning
        if command_line:
            _start_command()
        return _run(args, debug)
    except KeyboardInterrupt:
        if command_line:
            _quiet_after_interrupt()
        _close_progress_bars()
        _say(f"segformer{f' {command}' if command else ''}: interrupted\n")
        if command_line:
            # From the command line: leave at once. Every file is already written atomically, and the
            # interpreter's teardown (collecting a training process's objects) took seconds after Ctrl-C.
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
            os._exit(130)
        return 130
    except Exception as err:
        # A failure nobody anticipated (a bug): still one line on the command line, with the way to more.
        if not command_line or os.environ.get("SEGFORMER_DEBUG") == "1" or "--traceback" in sys.argv[1:]:
            raise
        _close_progress_bars()
        _say(
            f"segformer{f' {command}' if command else ''}: error: unexpected {type(err).__name__}: "
            f"{_first_line(err)} (a bug: please report it; --traceback shows where)\n"
        )
        return 1


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


def _run(args: argparse.Namespace, debug: bool) -> int:
    try:
        if hasattr(args, "threads"):
            from ..runtime import set_threads

            set_threads(args.threads)  # the run's start line or summary says what was chosen
        return int(args.func(args) or 0)
    except SegformerError as err:
        if debug:
            raise
        _close_progress_bars()
        _say(f"segformer {args.command}: error: {_first_line(err)}\n")
        return 1
    except OSError as err:
        # The write helpers name the path themselves; this catches what reaches the user otherwise
        # (a file that vanished while being read, a full disk under a third-party writer).
        if debug:
            raise
        where = f"{err.filename}: " if err.filename else ""
        _close_progress_bars()
        _say(f"segformer {args.command}: error: {where}{err.strerror or err}\n")
        return 1
