"""Thread choice: an explicit --threads is used as given, the default follows the idle cores, and the CLI
applies it before the command runs; a long run moves a default count to the one that measures faster."""

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


@pytest.mark.parametrize(
    ("cores", "threads", "device", "expected"),
    [
        (2, 2, "cpu", 0),  # 2 cores filled by 2 compute threads: a worker would preempt them
        (2, 1, "cpu", 1),
        (8, 4, "cpu", 4),
        (16, 2, "cpu", 4),  # at most 4
        (1, 1, "cuda", 1),
        (2, 2, "cuda", 1),
        (16, 16, "cuda", 4),
    ],
)
def test_auto_workers_use_the_cores_the_compute_threads_leave(monkeypatch, cores, threads, device, expected):
    monkeypatch.setattr(runtime, "available_cores", lambda: cores)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert runtime.auto_workers(None, device) == expected
        assert runtime.auto_workers(3, device) == 3  # a number given is used as given
        assert runtime.auto_workers(0, device) == 0
    finally:
        torch.set_num_threads(before)


def test_workers_auto_is_the_default_and_reads_from_yaml_and_the_command_line(tmp_path, monkeypatch):
    from segformer.cli import build_parser
    from segformer.config import RunConfig, load_recipe

    recipe = load_recipe("microsegformer-celebamask")
    assert recipe.data.workers is None  # auto
    assert recipe.override({"data.workers": "auto"}).data.workers is None
    assert recipe.override({"data.workers": 3}).data.workers == 3
    with pytest.raises(SegformerError, match=r"^data\.workers: expected int, got 'many'$"):
        recipe.override({"data.workers": "many"})
    saved = RunConfig.from_dict(recipe.to_dict())  # what a run folder's config.yaml holds
    assert saved.data.workers is None
    args = build_parser().parse_args(["train", "--synthetic", "8", "--workers", "auto"])
    assert args.workers == "auto"
    assert build_parser().parse_args(["train", "--synthetic", "8", "--workers", "2"]).workers == 2


# -- the thread count of a long run follows the load -------------------------------------------------------


def test_the_tuner_probes_a_neighbour_and_keeps_it_when_it_measures_faster():
    applied: list[int] = []
    tuner = runtime.ThreadTuner(2, 4, apply=applied.append, probe_every=3, margin=0.05, warmup=1)
    assert tuner.measured(50.0) is None and applied == []  # the first period warms up: not compared
    assert tuner.measured(60.0) is None and applied == [1]  # 60/s at 2 threads: the next period tries 1
    note = tuner.measured(90.0)
    assert tuner.threads == 1 and applied == [1]  # kept
    assert note is not None and note.startswith("threads: 2 -> 1 (1 thread measured 90/s against 60/s with 2")
    assert [tuner.measured(r) for r in (88.0, 89.0)] == [None, None] and applied == [1]
    assert tuner.measured(90.0) is None and applied == [1, 2]  # every 3 periods, the other neighbour
    assert tuner.measured(70.0) is None and applied == [1, 2, 1] and tuner.threads == 1  # slower: back


def test_a_probe_within_the_margin_goes_back():
    applied: list[int] = []
    tuner = runtime.ThreadTuner(2, 2, apply=applied.append, probe_every=2, warmup=0)
    assert tuner.measured(60.0) is None and applied == [1]
    assert tuner.measured(62.0) is None and applied == [1, 2] and tuner.threads == 2  # 3% is noise
    assert tuner.measured(60.0) is None and applied == [1, 2]
    assert tuner.measured(60.0) is None and applied == [1, 2, 1]  # 3 threads is out of range: 1 again
    assert runtime.ThreadTuner(1, 1, apply=applied.append, warmup=0).measured(5.0) is None
    assert applied == [1, 2, 1]  # one core: nothing to try


def test_only_a_default_thread_count_is_tuned(monkeypatch):
    monkeypatch.setattr(runtime, "available_cores", lambda: 4)
    monkeypatch.setattr(runtime, "idle_cores", lambda interval=0.25: 1.8)
    set_threads(None)
    tuner = runtime.ThreadTuner.for_run()
    assert tuner is not None and tuner.threads == 2 and tuner.cores == 4
    set_threads(3)  # --threads 3 is kept as given
    assert runtime.ThreadTuner.for_run() is None
    torch.set_num_threads(2)  # set by the program itself
    assert runtime.ThreadTuner.for_run() is None


def test_the_tuner_applies_its_count_and_says_why(monkeypatch):
    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    monkeypatch.setattr(runtime, "idle_cores", lambda interval=0.25: 2.0)
    set_threads(None)
    tuner = runtime.ThreadTuner.for_run()
    tuner.measured(10.0)
    tuner.measured(10.0)  # probes 1 thread
    assert torch.get_num_threads() == 1 and thread_choice().describe().endswith("(measured fastest now)")
    tuner.measured(5.0)  # slower: back to 2
    assert torch.get_num_threads() == 2
