"""How `segformer.cli.main` reports a failed command."""

from __future__ import annotations

import argparse
import io

from tqdm import tqdm

import segformer.cli as cli
from segformer import SegformerError


def test_an_error_clears_the_progress_bars_left_open(monkeypatch, capsys):
    stream, held = io.StringIO(), []

    def failing(args):
        bar = tqdm(total=3, desc="work", file=stream, leave=False, mininterval=0)
        bar.update(1)
        held.append(bar)  # what the traceback of a loop that raised keeps alive
        raise SegformerError("broken input")

    class Parser:
        def parse_args(self, argv):
            return argparse.Namespace(command="work", func=failing, traceback=False)

    monkeypatch.setattr(cli, "build_parser", Parser)
    assert cli.main(["work"]) == 1
    assert held[0].disable and "work:" in stream.getvalue()  # shown, then closed (cleared)
    assert stream.getvalue().endswith("\r")  # the bar's line was wiped before the error
    assert capsys.readouterr().err == "segformer work: error: broken input\n"
