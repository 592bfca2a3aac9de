"""Every numeric option of every subcommand, found in the argparse parser objects, tried with 0, -1 and
NaN: an invalid value is one argparse error line naming the option (exit 2, no traceback); a valid one
is accepted."""

from __future__ import annotations

import argparse

import pytest

from segformer.cli import build_parser, main

# Options where 0 means something (a seed, "load in the main process", "no figure", no warmup calls,
# nothing held out, no temporal smoothing). Everything else counts, sizes or budgets things and needs
# at least 1 (or > 0).
ZERO_IS_VALID = {
    ("bench", "--warmup"),
    ("bench", "--workers"),
    ("data synth", "--seed"),
    ("data synth", "--val-fraction"),
    ("data preview", "--seed"),
    ("demo", "--seed"),
    ("eval", "--min-area"),  # removes nothing
    ("eval", "--workers"),
    ("export", "--logit-adjust"),  # no adjustment
    ("export", "--min-area"),
    ("predict", "--min-area"),
    ("experiment", "--seed"),
    ("experiment", "--workers"),
    ("predict", "--smoothing"),
    ("report", "--samples"),
    ("train", "--workers"),
    ("serve", "--port"),  # a free port, printed
    ("predict", "--grow"),  # part masks as they are
    ("predict", "--feather"),  # hard edges
    ("distill", "--seed"),
    ("serve", "--max-wait-ms"),  # a batch of what is waiting, at once
    ("serve", "--min-area"),
}
# Options where a negative value means something (the rest refuse -1).
NEGATIVE_IS_VALID = {("predict", "--grow")}  # shrink the part masks


def subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(command words, parser) of every leaf subcommand."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for name, sub in subs[0].choices.items():
        yield from subcommands(sub, (*prefix, name))


def is_numeric(action: argparse.Action) -> bool:
    """Whether the option takes a number: its type turns "1", "0.5" or "18" into a number (or a list)."""
    if not action.option_strings or action.type is None or action.choices is not None:
        return False
    for probe in ("1", "0.5", "18"):
        try:
            value = action.type(probe)
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            continue
        values = value if isinstance(value, list) else [value]
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return False


def required_args(parser: argparse.ArgumentParser) -> list[str]:
    """Placeholder values for the required positional arguments and options."""
    out = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction) or a.nargs in ("?", "*"):
            continue
        if a.option_strings and not a.required:
            continue
        out += [a.option_strings[0]] if a.option_strings else []
        out.append(next(iter(a.choices)) if a.choices else "no-such-path")
    return out


def cases() -> list[tuple[tuple[str, ...], list[str], str, str]]:
    out = []
    for words, parser in subcommands(build_parser()):
        for action in parser._actions:
            if is_numeric(action):
                for value in ("0", "-1", "nan"):
                    out.append((words, required_args(parser), action.option_strings[-1], value))
    return out


CASES = cases()


def test_the_scan_finds_the_numeric_options():
    options = {(" ".join(w), opt) for w, _, opt, _ in CASES}
    assert options >= ZERO_IS_VALID  # the table above names real options
    assert {
        ("train", "--epochs"),
        ("export", "--opset"),
        ("predict", "--scales"),
        ("bench", "--threads"),
    } <= options
    assert len(options) >= 40


@pytest.mark.parametrize(
    "words, args, option, value", CASES, ids=lambda v: " ".join(v) if isinstance(v, tuple) else str(v)
)
def test_numeric_option(words, args, option, value, capsys):
    argv = [*words, *args, option, value]
    key = (" ".join(words), option)
    valid = (value == "0" and key in ZERO_IS_VALID) or (value == "-1" and key in NEGATIVE_IS_VALID)
    if valid:
        ns = build_parser().parse_args(argv)
        got = getattr(ns, option.lstrip("-").replace("-", "_"))
        assert got in (int(value), [int(value)])
        return
    try:
        code = main(argv)
    except SystemExit as exit_info:  # refused by the option's type
        code = exit_info.code
        assert code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith(f"segformer {' '.join(words)}: error: argument {option}")
        assert value in lines[-1]  # the refused value is quoted
        assert all(line.startswith(("usage:", " ")) for line in lines[:-1])  # the usage, then one error line
        return
    # Or refused by the library, before any work, as one line that names the setting (not an error about
    # the placeholder paths, which would hide an unchecked value).
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"segformer {words[0]}: error: ") and "\n" not in err
    name = option.lstrip("-")
    assert name in err or name.replace("-", "_") in err, err


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--workers", "0"],  # no data given: one line, after the 0 was accepted
        ["eval", "no-such-model", "--data", "no-such-data", "--workers", "0"],
    ],
)
def test_valid_zero_runs_to_the_next_check_without_a_traceback(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"segformer {argv[0]}: error: ") and "\n" not in err


def test_finite_scales_only():
    from segformer.cli.types import positive_floats

    assert positive_floats("0.75,1,1.25") == [0.75, 1.0, 1.25]
    for bad in ("1,nan", "1,inf", "0.5,0", "1,-1", "1,,2", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="comma-separated numbers > 0"):
            positive_floats(bad)
