"""Every option and positional argument of every `segformer` subcommand explains itself in --help."""

from __future__ import annotations

import argparse

from segformer.cli import build_parser


def walk(parser: argparse.ArgumentParser, path: str = "segformer"):
    """(command path, parser) for `parser` and every subcommand below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")


def test_every_option_and_argument_has_help_text():
    missing = []
    commands = 0
    for path, parser in walk(build_parser()):
        commands += 1
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                missing += [f"{path} {name}" for name in action.choices if not helps.get(name)]
            elif not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert commands > 15  # the walk reached the subcommands (and the data subcommands)
    assert missing == []


def test_commands_that_compute_take_threads():
    parser = build_parser()
    commands = dict(walk(parser))
    computing = ("demo", "train", "eval", "predict", "export", "experiment", "attention", "report", "bench")
    for command in computing:
        sub = commands[f"segformer {command}"]
        assert any("--threads" in a.option_strings for a in sub._actions), command


def test_warnings_on_the_command_line_are_one_line(monkeypatch, capsys):
    import warnings

    from segformer.cli import main

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    assert main(["info", "microsegformer"]) == 0
    text = warnings.formatwarning(
        "no faces found in x.jpg", UserWarning, "/src/segformer/faces/pipeline.py", 12
    )
    assert text == "segformer: warning: no faces found in x.jpg\n"
