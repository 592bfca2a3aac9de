"""The one output policy (`segformer.fileio.OutputFolder`): a file is ours only when the output folder's
manifest says this command wrote it, inputs are never written, one writer per folder."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from segformer import SegformerError
from segformer.fileio import JOURNAL_NAME, LOCK_NAME, MANIFEST_NAME, OutputFolder, sha256_file, writer_lock

from conftest import SRC


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def enter(cm) -> None:
    with cm:
        pass


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# -- the API --------------------------------------------------------------------------------------------


def test_new_folder_written_and_recorded(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out, "predict") as o:
        o.write_bytes(out / "a.png", b"A")
        o.write_text(out / "sub" / "b.txt", "B")
        assert (out / LOCK_NAME).is_file()
    assert not (out / LOCK_NAME).exists()
    assert not (out / JOURNAL_NAME).exists()  # folded into the manifest on leaving
    doc = json.loads((out / MANIFEST_NAME).read_text())
    assert doc["format"] == "segformer-manifest"
    assert doc["files"]["a.png"] == {"command": "predict", "size": 1, "sha256": sha(out / "a.png")}
    assert doc["files"]["sub/b.txt"]["sha256"] == sha(out / "sub" / "b.txt")


def test_ours_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out, "predict") as o:
        o.write_bytes(out / "a.png", b"first")
    with OutputFolder(out, "predict") as o, pytest.raises(SegformerError, match="pass --overwrite") as err:
        o.claim(out / "a.png")
    one_line(err)
    with OutputFolder(out, "predict", overwrite=True) as o:
        o.write_bytes(out / "a.png", b"second")
    assert (out / "a.png").read_bytes() == b"second"
    assert json.loads((out / MANIFEST_NAME).read_text())["files"]["a.png"]["sha256"] == sha(out / "a.png")


@pytest.mark.parametrize("overwrite", [False, True])
def test_foreign_file_refused_even_with_overwrite(tmp_path, overwrite):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"user")
    with OutputFolder(out, "predict", overwrite=overwrite) as o:
        with pytest.raises(
            SegformerError,
            match=r"a\.png: already exists and is not a segformer output \(segformer predict did not",
        ) as err:
            o.claim(out / "a.png")
        assert "remove the file yourself" in one_line(err)
        o.write_bytes(out / "b.png", b"ours")  # a new name beside it is fine
    assert (out / "a.png").read_bytes() == b"user"


def test_file_of_another_command_is_not_ours(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out, "data synth") as o:
        o.write_bytes(out / "mask.png", b"ground truth")
    with (
        OutputFolder(out, "predict", overwrite=True) as o,
        pytest.raises(
            SegformerError, match="segformer data synth wrote it, segformer predict did not write it"
        ),
    ):
        o.claim(out / "mask.png")
    assert (out / "mask.png").read_bytes() == b"ground truth"


def test_file_changed_by_the_user_is_theirs(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out, "predict") as o:
        o.write_bytes(out / "a.png", b"ours")
    (out / "a.png").write_bytes(b"edited by the user")
    with (
        OutputFolder(out, "predict", overwrite=True) as o,
        pytest.raises(SegformerError, match="it was changed after segformer predict wrote it"),
    ):
        o.claim(out / "a.png")
    # same size, other bytes: still theirs
    (out / "a.png").write_bytes(b"oars")
    with OutputFolder(out, "predict", overwrite=True) as o, pytest.raises(SegformerError):
        o.claim(out / "a.png")


def test_folder_without_manifest_has_nothing_of_ours(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "x.png").write_bytes(b"written by an older version")
    with OutputFolder(out, "predict", overwrite=True) as o:
        with pytest.raises(SegformerError, match=f"no {MANIFEST_NAME}") as err:
            o.claim(out / "x.png")
        assert "choose another --out or remove the file yourself" in one_line(err)
    assert not (out / MANIFEST_NAME).exists()  # nothing written: no manifest appears in the user's folder


def test_inputs_are_never_written(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"input")
    single = tmp_path / "one.png"
    single.write_bytes(b"input")
    # the output folder is an input folder, or inside one: refused before anything is created
    for out in (images, images / "preds"):
        with pytest.raises(SegformerError, match="never writes over its input") as err:
            OutputFolder(out, "predict", inputs=[images]).__enter__()
        one_line(err)
    assert not (images / "preds").exists() and not (images / LOCK_NAME).exists()
    # an input file inside the output folder is refused, even with overwrite, and even when recorded as ours
    with OutputFolder(tmp_path, "predict", inputs=[single], overwrite=True) as o:
        with pytest.raises(SegformerError, match="is the command's input"):
            o.claim(single)
        o.write_bytes(tmp_path / "one_mask.png", b"ours")
    with (
        OutputFolder(tmp_path, "predict", inputs=[tmp_path / "one_mask.png"], overwrite=True) as o,
        pytest.raises(SegformerError, match="is the command's input"),
    ):
        o.claim(tmp_path / "one_mask.png")
    assert single.read_bytes() == b"input"


def test_input_reached_through_a_link_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"input")
    out = tmp_path / "out"
    out.mkdir()
    os.link(data / "a.png", out / "hard.png")
    (tmp_path / "alias").symlink_to(data)
    with (
        OutputFolder(out, "predict", inputs=[data / "a.png"], overwrite=True) as o,
        pytest.raises(SegformerError, match="is the command's input"),
    ):
        o.claim(out / "hard.png")
    with pytest.raises(SegformerError, match="never writes over its input"):
        enter(OutputFolder(tmp_path / "alias" / "x", "predict", inputs=[data]))
    assert (data / "a.png").read_bytes() == b"input"


def test_links_and_folders_are_not_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "target.png").write_bytes(b"user")
    (out / "link.png").symlink_to(tmp_path / "target.png")
    (out / "dir.png").mkdir()
    with OutputFolder(out, "predict", overwrite=True) as o:
        with pytest.raises(SegformerError, match="is a link"):
            o.claim(out / "link.png")
        with pytest.raises(SegformerError, match="is a folder"):
            o.claim(out / "dir.png")
    assert (tmp_path / "target.png").read_bytes() == b"user"


def test_for_file_rules_and_manifest_beside_it(tmp_path):
    target = tmp_path / "m" / "model.onnx"
    with OutputFolder.for_file(target, "export") as o:
        assert (target.parent / ".model.onnx.segformer-lock").is_file()
        o.write_bytes(target, b"onnx")
        o.write_text(target.with_suffix(".md"), "card")
    files = json.loads((target.parent / MANIFEST_NAME).read_text())["files"]
    assert set(files) == {"model.onnx", "model.md"}
    with pytest.raises(SegformerError, match="pass --overwrite"):
        OutputFolder.for_file(target, "export").__enter__()
    with OutputFolder.for_file(target, "export", overwrite=True) as o:
        o.write_bytes(target, b"onnx 2")
    # a user's file at the target, or a user's .md beside it, is refused on entry / claim
    user = tmp_path / "user.onnx"
    user.write_bytes(b"mine")
    with pytest.raises(SegformerError, match="segformer export did not write it"):
        enter(OutputFolder.for_file(user, "export", overwrite=True))
    (tmp_path / "card.md").write_text("my notes")
    card = OutputFolder.for_file(tmp_path / "card.onnx", "export", overwrite=True)
    with card as o, pytest.raises(SegformerError, match=r"card\.md: already exists"):
        o.claim(tmp_path / "card.md")
    assert user.read_bytes() == b"mine" and (tmp_path / "card.md").read_text() == "my notes"
    with pytest.raises(SegformerError, match="is a folder"):
        enter(OutputFolder.for_file(tmp_path / "m", "export", overwrite=True))


def test_a_file_where_the_folder_should_be(tmp_path):
    (tmp_path / "f").write_text("user")
    with pytest.raises(SegformerError, match="is not a folder") as err:
        enter(OutputFolder(tmp_path / "f", "predict"))
    one_line(err)
    with pytest.raises(SegformerError, match="is a file, not a folder"):
        enter(OutputFolder(tmp_path / "f" / "sub", "predict"))
    assert (tmp_path / "f").read_text() == "user"


def test_unused_new_folder_disappears(tmp_path):
    with OutputFolder(tmp_path / "out", "predict"):
        pass
    assert not (tmp_path / "out").exists()
    with pytest.raises(RuntimeError), OutputFolder(tmp_path / "out2", "predict"):
        raise RuntimeError
    assert not (tmp_path / "out2").exists()


def test_a_failed_write_records_nothing(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out, "predict") as o:
        o.write_bytes(out / "a.png", b"ours")
        with pytest.raises(RuntimeError), o.atomic_file(out / "b.png") as f:
            f.write(b"half")
            raise RuntimeError("the model failed")
    assert set(json.loads((out / MANIFEST_NAME).read_text())["files"]) == {"a.png"}
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "a.png"]


def test_foreign_manifest_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).write_text("my own json")
    with pytest.raises(SegformerError, match="is not a segformer manifest") as err:
        enter(OutputFolder(out, "predict"))
    one_line(err)
    assert (out / MANIFEST_NAME).read_text() == "my own json"
    assert not (out / LOCK_NAME).exists()


def test_claim_outside_the_folder_is_a_bug(tmp_path):
    with OutputFolder(tmp_path / "out", "predict") as o:
        for bad in (tmp_path / "x.png", tmp_path / "out" / MANIFEST_NAME, tmp_path / "out" / LOCK_NAME):
            with pytest.raises(ValueError):
                o.claim(bad)


def test_forget_removes_only_ours(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "user.png").write_bytes(b"user")
    with OutputFolder(out, "predict") as o:
        o.write_bytes(out / "a.png", b"ours")
        o.forget(out / "a.png")
        with pytest.raises(SegformerError, match="it is kept"):
            o.forget(out / "user.png")
    assert not (out / "a.png").exists() and (out / "user.png").read_bytes() == b"user"
    assert sorted(p.name for p in out.iterdir()) == ["user.png"]  # nothing of ours left: no manifest either


# -- kills and concurrency ------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from segformer.fileio import OutputFolder
    out = Path(sys.argv[1])
    with OutputFolder(out, "predict", overwrite=True) as o:
        for i in range(int(sys.argv[2])):
            o.write_bytes(out / f"{i}.png", b"x" * i)
        print("ready", flush=True)
        time.sleep(float(sys.argv[3]))
    """
)


def writer(out: Path, n: int, sleep: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(out), str(n), str(sleep)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_second_writer_refused_in_one_line(tmp_path):
    out = tmp_path / "out"
    proc = writer(out, 1, 30)
    try:
        with pytest.raises(SegformerError, match=rf"{out} is being written by process {proc.pid}") as err:
            enter(OutputFolder(out, "predict"))
        one_line(err)
        # a single file in it has its own lock: a writer of another file is not held up
        with OutputFolder.for_file(out / "other.onnx", "export") as o:
            o.write_bytes(out / "other.onnx", b"onnx")
    finally:
        proc.kill()
        proc.wait()


def test_killed_writer_loses_nothing_recorded(tmp_path):
    out = tmp_path / "out"
    proc = writer(out, 5, 60)
    assert (out / JOURNAL_NAME).is_file()  # records are on disk while the command runs
    proc.kill()
    proc.wait()
    # the lock of the dead process is taken over, and its files are ours
    with OutputFolder(out, "predict", overwrite=True) as o:
        for i in range(5):
            o.claim(out / f"{i}.png")
    assert set(json.loads((out / MANIFEST_NAME).read_text())["files"]) == {f"{i}.png" for i in range(5)}
    assert not (out / JOURNAL_NAME).exists()


def test_torn_journal_line_is_ignored(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out, "predict") as o:
        o.write_bytes(out / "a.png", b"ours")
    (out / "b.png").write_bytes(b"user")
    with open(out / JOURNAL_NAME, "w") as f:
        f.write('{"path": "b.png", "command": "pre')  # cut by a kill
    with OutputFolder(out, "predict", overwrite=True) as o:
        o.claim(out / "a.png")
        with pytest.raises(SegformerError):
            o.claim(out / "b.png")


def test_writer_lock_is_the_training_lock(tmp_path):
    from segformer.engine.rundir import RunDir

    run = RunDir(tmp_path / "run")
    with run.lock(), pytest.raises(SegformerError, match=f"being written by process {os.getpid()}"):
        enter(writer_lock(run.path, "lock"))
    with writer_lock(run.path, "lock"), pytest.raises(SegformerError, match="being written by"):
        enter(run.lock())


def test_a_users_lock_named_file_is_not_truncated(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text("my file, oddly named")
    with pytest.raises(SegformerError, match="is not a segformer lock"):
        enter(OutputFolder(out, "predict"))
    assert (out / LOCK_NAME).read_text() == "my file, oddly named"


def test_sha256_file(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    assert sha256_file(tmp_path / "a") == hashlib.sha256(b"abc").hexdigest()


# -- every writing command against a folder of the user's files -------------------------------------------


def _tree_sums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _protected(folder: Path, command: str, inputs: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file in `folder` that is the user's: all but the output policy's own bookkeeping
    and the files its manifests record as written by `command` itself (which it may replace) unless they
    lie in one of the command's `inputs` (never written, even when ours)."""
    ours: set[str] = set()
    for manifest in folder.rglob(MANIFEST_NAME):
        files = json.loads(manifest.read_text())["files"]
        base = manifest.parent.relative_to(folder)
        ours |= {str(base / name) for name, e in files.items() if e["command"] == command}
    bookkeeping = (MANIFEST_NAME, JOURNAL_NAME)
    return {
        name: digest
        for name, digest in _tree_sums(folder).items()
        if (name not in ours or name.startswith(inputs))
        and Path(name).name not in bookkeeping
        and not name.endswith(LOCK_NAME)
    }


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import segformer

    from conftest import tiny_config

    path = tmp_path_factory.mktemp("model") / "m"
    segformer.save(
        segformer.create_model(tiny_config("micro", num_classes=19)),
        path,
        meta={"label_set": "celebamask", "image_size": 32},
    )
    return path


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    from test_data_datasets import write_pairs

    root = tmp_path_factory.mktemp("faces")
    write_pairs(root, n=4, size=32)
    write_pairs(root, split="val", n=2, size=32)
    return root


def user_folder(root: Path, model: Path) -> Path:
    """A folder of the user's: ground-truth masks made by `data synth` (recorded by it), foreign PNGs (one
    inside the synthetic train/ split), a card beside where an export would go, a config.json, a CE7454
    solution of their own, the inputs of a prediction and a model of theirs, both inside the folder."""
    import shutil

    from PIL import Image

    from segformer.cli import main

    assert main(["data", "synth", str(root), "--num", "3", "--size", "32", "--val-fraction", "0.34"]) == 0
    rng = np.random.default_rng(0)
    for name in ("photo.png", "train/images/holiday.png", "inputs/photo.png", "inputs/synth_000001.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name)
    (root / "model.md").write_text("my card\n")
    (root / "config.json").write_text('{"mine": true}\n')
    (root / "solution").mkdir()
    (root / "solution" / "run.py").write_text("print('my own solution')\n")
    shutil.copytree(model, root / "mymodel")
    # outputs of earlier commands that later ones read: ours, and inputs all the same
    assert main(["convert", str(model), "--out", str(root / "converted")]) == 0
    assert main(["predict", str(model), str(root / "inputs"), "--out", str(root / "preds"), "--quiet"]) == 0
    return root


# name -> argv(U, model, faces, tmp); the user's folder U is the output, or holds it
ALL_WRITERS = {
    "predict (inputs inside the output)": lambda u, m, f, t: [
        "predict", str(m), str(u / "inputs"), "--out", str(u),
    ],
    "predict into ground-truth masks": lambda u, m, f, t: [
        "predict", str(m), str(u / "train" / "images"), "--out", str(u / "train" / "masks"),
    ],
    "export onnx": lambda u, m, f, t: ["export", str(m), "--format", "onnx", "--out", str(u / "model.onnx")],
    "export pretrained (a card beside)": lambda u, m, f, t: [
        "export", str(m), "--format", "pretrained", "--out", str(u / "model.safetensors"),
    ],
    "export ce7454": lambda u, m, f, t: ["export", str(m), "--format", "ce7454", "--out", str(u)],
    "export its input": lambda u, m, f, t: [
        "export", str(u / "mymodel"), "--format", "ce7454", "--out", str(u / "mymodel"),
    ],
    "convert": lambda u, m, f, t: ["convert", str(m), "--out", str(u)],
    "convert into its input": lambda u, m, f, t: ["convert", str(u / "mymodel"), "--out", str(u / "mymodel")],
    "convert its own output into itself": lambda u, m, f, t: [
        "convert", str(u / "converted"), "--num-classes", "7", "--out", str(u / "converted"),
    ],
    "predict its own masks into themselves": lambda u, m, f, t: [
        "predict", str(m), str(u / "preds"), "--out", str(u / "preds"),
    ],
    "data synth": lambda u, m, f, t: ["data", "synth", str(u), "--num", "2", "--size", "32"],
    "data preview of itself": lambda u, m, f, t: ["data", "preview", str(u), "--num", "2", "--out", str(u)],
    "data preview inside": lambda u, m, f, t: [
        "data", "preview", str(u), "--num", "2", "--out", str(u / "prev"),
    ],
    "data preview": lambda u, m, f, t: ["data", "preview", str(f), "--num", "2", "--out", str(u)],
    "data check --fix of itself": lambda u, m, f, t: ["data", "check", str(u), "--fix", str(u)],
    "data check --fix": lambda u, m, f, t: ["data", "check", str(f), "--fix", str(u)],
    "data prepare": lambda u, m, f, t: ["data", "prepare", str(t / "raw"), str(u)],
    "train": lambda u, m, f, t: ["train", "--data", str(f), "--epochs", "1", "--out", str(u), "--quiet"],
    "train inside its data": lambda u, m, f, t: [
        "train", "--data", str(u), "--epochs", "1", "--out", str(u / "run"), "--quiet",
    ],
    "report": lambda u, m, f, t: ["report", str(t / "run"), "--out", str(u)],
    "attention (its image inside)": lambda u, m, f, t: [
        "attention", str(m), str(u / "photo.png"), "--out", str(u),
    ],
    "experiment": lambda u, m, f, t: ["experiment", "depth", "--data", str(f), "--out", str(u), "--quick"],
    "demo": lambda u, m, f, t: ["demo", "--out", str(u), "--num", "2", "--val", "1", "--quiet"],
}  # fmt: skip
SLOW_WITH_OVERWRITE = {"experiment", "demo"}  # with --overwrite they train: the refusal is fast


def _command_name(argv: list[str]) -> str:
    return f"data {argv[1]}" if argv[0] == "data" else argv[0]


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("name", ALL_WRITERS)
def test_no_command_changes_a_file_of_the_users(name, overwrite, tiny_model, faces, tmp_path, capsys):
    from segformer.cli import main
    from test_data_prepare import make_raw

    argv = ALL_WRITERS[name](tmp_path / "user", tiny_model, faces, tmp_path)
    if overwrite and name in SLOW_WITH_OVERWRITE and os.environ.get("SEGFORMER_SLOW") != "1":
        pytest.skip("trains a model (set SEGFORMER_SLOW=1)")
    user = user_folder(tmp_path / "user", tiny_model)
    if name == "data prepare":
        make_raw(tmp_path / "raw", n=2)
    if name == "report":
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "summary.json").write_text("{}")
    command = _command_name(argv)
    flag = next((f for f in ("--out", "--fix") if f in argv), None)
    at = argv.index(flag) + 1 if flag else len(argv) - 1  # where the output is named
    inputs = tuple(
        str(Path(a).relative_to(user)) for i, a in enumerate(argv) if i != at and a.startswith(str(user))
    )
    before = _protected(user, command, inputs)
    if overwrite:
        argv = [*argv, "--overwrite"]
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit:  # a command without --overwrite: a usage error, nothing run
        assert overwrite and exit.code == 2
        return
    err = capsys.readouterr().err
    if code != 0:
        lines = [line for line in err.strip().splitlines() if line.startswith("segformer ")]
        assert len(lines) == 1 and "Traceback" not in err, err  # a refusal is one line
    after = _tree_sums(user)
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    assert not changed, (changed, err)


def test_two_commands_never_write_one_folder_at_once(tmp_path):
    """The second `data synth` into a folder another one is writing is refused in one line, and the first
    one's work is not disturbed; after it, the folder is free again."""
    from conftest import run_cli

    out = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    first = subprocess.Popen(
        [sys.executable, "-m", "segformer", "data", "synth", str(out), "--num", "20000", "--size", "64"],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            if (out / LOCK_NAME).is_file() and (out / LOCK_NAME).read_text().strip():
                break
            time.sleep(0.1)
        second = run_cli("data", "synth", str(out), "--num", "2", "--size", "32", "--overwrite")
        assert second.returncode == 1
        assert second.stderr.splitlines() == [
            f"segformer data: error: {out} is being written by process {first.pid} on {socket.gethostname()} "
            f"(lock {out / LOCK_NAME}); wait for that command to end or choose another --out"
        ]
        assert first.poll() is None  # still working
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    assert not out.exists()  # the interrupted first one left nothing, not even its lock
    assert run_cli("data", "synth", str(out), "--num", "2", "--size", "32").returncode == 0
