"""Thread choice: an explicit --threads is used as given, the default follows the idle cores, and the CLI
applies it before the command runs."""

from __future__ import annotations

import pytest
import torch

import segformer.runtime as runtime
from segformer import SegformerError
from segformer.runtime import choose_threads, set_threads, thread_choice


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_explicit_threads_are_used_as_given():
    choice = choose_threads(3)
    assert choice.threads == 3 and choice.reason == "--threads"
    with pytest.raises(SegformerError, match="--threads must be at least 1 \\(got 0\\)"):
        choose_threads(0)


@pytest.mark.parametrize("idle, expected", [(0.0, 1), (0.4, 1), (0.6, 1), (1.2, 1), (1.6, 2), (2.0, 2)])
def test_default_uses_the_idle_cores(monkeypatch, idle, expected):
    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    monkeypatch.setattr(runtime, "idle_cores", lambda interval=0.25: idle)
    choice = choose_threads(None)
    assert choice.threads == expected and choice.cores == 2
    assert f"{idle:.1f} cores idle now" in choice.describe()


def test_default_is_every_core_where_idleness_is_unknown(monkeypatch):
    monkeypatch.setattr(runtime, "available_cores", lambda: 4)
    monkeypatch.setattr(runtime, "idle_cores", lambda interval=0.25: None)
    assert choose_threads(None).threads == 4


def test_idle_cores_reads_a_plausible_share_of_the_machine():
    idle = runtime.idle_cores(0.05)
    if idle is None:
        pytest.skip("no /proc/stat")
    assert 0.0 <= idle <= runtime.os.cpu_count() + 1e-9


def test_set_threads_applies_to_torch_and_is_reported():
    set_threads(1)
    cores = runtime.available_cores()
    assert torch.get_num_threads() == 1
    assert thread_choice().describe() == f"1 CPU thread of {cores} cores (--threads)"
    torch.set_num_threads(2)  # changed behind its back: reported as it is
    assert thread_choice().threads == 2 and thread_choice().reason == "set by the program"


def test_cli_applies_threads_before_the_command(monkeypatch):
    from segformer.cli import main

    seen = []
    monkeypatch.setattr("segformer.cli.evaluate.run", lambda args: seen.append(torch.get_num_threads()) or 0)
    assert main(["eval", "some-model", "--data", "x", "--threads", "1"]) == 0
    assert seen == [1]
