"""The filesystem and the user's folders are input too: no command deletes or replaces what the user
owns, and a write that fails (no permission, full disk, a file where a folder should be) is one line
naming the path, with nothing half-written and no temporary file left behind."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import segformer
from segformer import SegformerError
from segformer.apps.export import export_model
from segformer.apps.report import build_report
from segformer.checkpoint import convert
from segformer.cli import main
from segformer.data.check import fix_dataset
from segformer.data.io import save_image
from segformer.data.preview import preview_dataset
from segformer.data.synthetic import write_synthetic_dataset
from segformer.engine.train import train
from segformer.fileio import MANIFEST_NAME as MANIFEST
from segformer.fileio import atomic_file, check_output_dir, is_ours
from segformer.inference.files import predict_files
from test_data_datasets import write_pairs
from test_data_prepare import make_raw
from test_train import TINY_MODEL, tiny_run

from conftest import SRC, tiny_config

NOTE = "the user's notes: irreplaceable"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "m"
    segformer.save(
        segformer.create_model(tiny_config(num_classes=19, norm_eps=1e-5, embed_norm_eps=1e-5)),
        path,
        meta={"label_set": "celebamask"},
    )
    return path


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    write_pairs(root, n=4, size=32)
    write_pairs(root, split="val", n=2, size=32)
    return root


def foreign_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text(NOTE)
    return path


def foreign_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(NOTE)
    return path


def temp_leftovers(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob(".*") if p.name.endswith((".tmp", ".old")))


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("segformer ") and ": error: " in lines[0], err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# Every command that writes a folder, as (name, argv builder(out, model, faces, tmp)). The output is
# OUT except for the CE7454 export, which writes OUT/solution.
WRITERS = {
    "convert": lambda out, m, f, t: ["convert", str(m), "--out", str(out)],
    "convert --to hf": lambda out, m, f, t: ["convert", str(m), "--out", str(out), "--to", "hf"],
    "export ce7454": lambda out, m, f, t: ["export", str(m), "--format", "ce7454", "--out", str(out.parent)],
    "train": lambda out, m, f, t: ["train", "--data", str(f), "--epochs", "1", "--out", str(out), "--quiet"],
    "data synth": lambda out, m, f, t: ["data", "synth", str(out), "--num", "2", "--size", "32"],
    "data preview": lambda out, m, f, t: ["data", "preview", str(f), "--num", "2", "--out", str(out)],
    "data prepare": lambda out, m, f, t: ["data", "prepare", str(t / "raw"), str(out)],
    "data check --fix": lambda out, m, f, t: ["data", "check", str(f), "--fix", str(out)],
    "experiment": lambda out, m, f, t: [
        "experiment",
        "depth",
        "--data",
        str(f),
        "--out",
        str(out),
        "--quick",
    ],
    "report": lambda out, m, f, t: ["report", str(t / "run"), "--out", str(out)],
    "attention": lambda out, m, f, t: ["attention", str(m), str(t / "face.png"), "--out", str(out)],
    "demo": lambda out, m, f, t: ["demo", "--out", str(out), "--num", "2", "--val", "1", "--quiet"],
}


def writer_inputs(tmp_path: Path, name: str) -> Path:
    """The inputs a writer needs besides the model and the faces; returns its output path."""
    if name == "data prepare":
        make_raw(tmp_path / "raw", n=2)
    if name == "report":
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "summary.json").write_text("{}")
    if name == "attention":
        save_image(tmp_path / "face.png", np.zeros((32, 32, 3), np.uint8))
    return tmp_path / "sub" / ("solution" if name == "export ce7454" else "out")


@pytest.mark.parametrize("name", WRITERS)
def test_a_folder_holding_the_users_files_is_refused(name, model_dir, faces, tmp_path, capsys):
    out = writer_inputs(tmp_path, name)
    foreign_folder(out)
    assert main(WRITERS[name](out, model_dir, faces, tmp_path)) == 1
    one_line_error(capsys, str(out), "not empty", "notes.txt")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written, nothing removed
    assert (out / "notes.txt").read_text() == NOTE and temp_leftovers(out.parent) == []


@pytest.mark.parametrize("name", WRITERS)
def test_a_file_is_never_replaced_by_a_folder(name, model_dir, faces, tmp_path, capsys):
    out = writer_inputs(tmp_path, name)
    foreign_file(out)
    argv = WRITERS[name](out, model_dir, faces, tmp_path)
    assert main(argv) == 1
    one_line_error(capsys, str(out), "not a folder")
    # not even when told to overwrite
    if name in ("convert", "data synth", "train", "report", "attention", "demo", "experiment"):
        assert main([*argv, "--overwrite"]) == 1
        one_line_error(capsys, str(out), "not a folder")
    assert out.read_text() == NOTE and temp_leftovers(out.parent) == []


@pytest.mark.parametrize("name", ["convert", "data synth", "train", "export ce7454", "data preview"])
def test_an_output_under_a_regular_file_is_one_line(name, model_dir, faces, tmp_path, capsys):
    writer_inputs(tmp_path, name)
    blocker = foreign_file(tmp_path / "blocker")
    out = blocker / "deeper" / ("solution" if name == "export ce7454" else "out")
    assert main(WRITERS[name](out, model_dir, faces, tmp_path)) == 1
    one_line_error(capsys, str(out), f"{blocker} is a file, not a folder")
    assert blocker.read_text() == NOTE


def test_python_api_refuses_the_same_folders(model_dir, faces, tmp_path):
    model = segformer.load(model_dir)
    out = foreign_folder(tmp_path / "out")
    calls = {
        "save": lambda: segformer.save(model, out),
        "save hf": lambda: segformer.save(model, out, format="hf"),
        "convert": lambda: convert(model_dir, out),
        "synth": lambda: write_synthetic_dataset(out, num=2, size=32, progress=False),
        "preview": lambda: preview_dataset(faces, out, num=2, progress=False),
        "fix": lambda: fix_dataset(faces, out, progress=False),
        "train": lambda: train(tiny_run(faces, epochs=1), out, progress=False),
        "report": lambda: build_report([model_dir.parent], out),
    }
    (model_dir.parent / "summary.json").write_text("{}")  # makes it a run folder for `report`
    try:
        for what, call in calls.items():
            with pytest.raises(SegformerError, match=rf"{out}: already exists and is not empty") as err:
                call()
            assert "notes.txt" in str(err.value) and "\n" not in str(err.value), what
    finally:
        (model_dir.parent / "summary.json").unlink()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == NOTE
    with pytest.raises(SegformerError, match="not a folder"):
        segformer.save(model, foreign_file(tmp_path / "file"))
    with pytest.raises(SegformerError, match=r"blocker is a file, not a folder"):
        segformer.save(model, foreign_file(tmp_path / "blocker") / "m")
    with pytest.raises(SegformerError, match=r"is a folder; segformer does not replace a folder"):
        export_model(model_dir, foreign_folder(tmp_path / "model.onnx"))
    assert (tmp_path / "model.onnx" / "notes.txt").read_text() == NOTE


def test_overwrite_writes_next_to_the_users_files_and_keeps_them(model_dir, tmp_path, capsys):
    out = foreign_folder(tmp_path / "out")
    assert main(["convert", str(model_dir), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        MANIFEST,
        "config.json",
        "model.safetensors",
        "notes.txt",
    ]
    assert segformer.load(out).config == segformer.load(model_dir).config
    assert main(["convert", str(model_dir), "--out", str(out), "--to", "hf", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "segformer"  # ours: replaced
    assert (out / "notes.txt").read_text() == NOTE

    data = foreign_folder(tmp_path / "data")
    argv = ["data", "synth", str(data), "--num", "4", "--size", "32", "--val-fraction", "0.25"]
    assert main([*argv, "--overwrite"]) == 0
    # (.segformer-manifest.json: the record that says which files are ours; notes.txt is not)
    assert sorted(p.name for p in data.iterdir()) == [MANIFEST, "dataset.json", "notes.txt", "train", "val"]
    assert main(["data", "synth", str(data), "--num", "2", "--size", "32", "--overwrite"]) == 0
    assert len(list((data / "train" / "images").iterdir())) == 2 and (data / "notes.txt").read_text() == NOTE


def test_the_users_entries_at_our_names_are_refused_even_with_overwrite(model_dir, faces, tmp_path, capsys):
    out = foreign_folder(tmp_path / "out")
    foreign_file(out / "config.json")  # someone else's config.json
    for argv in (["convert", str(model_dir), "--out", str(out)], ["convert", str(model_dir), "--out",
                                                                   str(out), "--overwrite"]):  # fmt: skip
        assert main(argv) == 1
        one_line_error(capsys, str(out), "config.json", "did not write")
    assert (out / "config.json").read_text() == NOTE

    data = foreign_folder(tmp_path / "mydata")
    write_pairs(data, n=2)  # the user's own dataset: train/ is not ours to replace
    before = sorted(p.name for p in (data / "train" / "images").iterdir())
    assert main(["data", "synth", str(data), "--num", "2", "--size", "32", "--overwrite"]) == 1
    one_line_error(capsys, str(data), "train", "did not write")
    assert sorted(p.name for p in (data / "train" / "images").iterdir()) == before

    run = foreign_folder(tmp_path / "run")
    foreign_file(run / "best")  # a file where the run writes its best/ model folder
    with pytest.raises(SegformerError, match=r"best, which segformer did not write"):
        train(tiny_run(faces, epochs=1), run, progress=False, overwrite=True)
    assert (run / "best").read_text() == NOTE


def test_our_own_outputs_are_replaced_without_asking(model_dir, tmp_path):
    model = segformer.load(model_dir)
    segformer.save(model, tmp_path / "m")
    segformer.save(model, tmp_path / "m", format="hf")  # a model folder of ours, any format
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "segformer"
    # the HF directory in place of the native one (with the image processor settings HF pipelines read),
    # and the manifest that records them as segformer save's
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        MANIFEST,
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    segformer.save(model, tmp_path / "m")  # and back: the HF-only file of ours goes with it
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        MANIFEST,
        "config.json",
        "model.safetensors",
    ]
    export_model(model_dir, tmp_path / "sub", format="ce7454", verify=False)
    export_model(model_dir, tmp_path / "sub", format="ce7454", verify=False)
    assert is_ours(tmp_path / "sub" / "solution", "ce7454")
    pytest.importorskip("onnx")
    export_model(model_dir, tmp_path / "m.onnx", check=False)
    export_model(model_dir, tmp_path / "m.onnx", check=False)  # our own export: replaced
    with pytest.raises(SegformerError, match=r"x\.onnx: already exists and is not a segformer ONNX file"):
        export_model(model_dir, foreign_file(tmp_path / "x.onnx"), check=False)
    assert (tmp_path / "x.onnx").read_text() == NOTE
    assert sorted(p.name for p in (tmp_path / "sub" / "solution").iterdir()) == [
        MANIFEST,
        "ckpt.pth",
        "requirements.txt",
        "run.py",
    ]


def test_predict_only_creates_or_replaces_its_own_files(model_dir, tmp_path, capsys):
    images = tmp_path / "images"
    for name in ("a", "b"):
        save_image(images / f"{name}.jpg", np.full((20, 24, 3), 90, np.uint8))
    out = foreign_folder(tmp_path / "out")
    argv = ["predict", str(model_dir), str(images), "--out", str(out), "--overlay"]
    assert main(argv) == 0
    assert main(argv) == 0  # predicting again replaces its own label maps and overlays
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "a.png", "b.png", "notes.txt", "overlays"]
    assert (out / "notes.txt").read_text() == NOTE

    Image.new("RGB", (4, 4)).save(out / "b.png")  # now b.png is a picture of the user's
    Image.new("RGB", (4, 4)).save(out / "overlays" / "a.png")
    user_bytes = (out / "b.png").read_bytes()
    assert main(argv) == 1
    one_line_error(capsys, str(out / "overlays" / "a.png"), "not a segformer")  # the first conflict
    assert (out / "b.png").read_bytes() == user_bytes
    (out / "overlays" / "a.png").unlink()
    (out / "b.png").unlink()
    (out / "b.png").mkdir()  # a folder where a label map goes
    assert main(argv) == 1
    one_line_error(capsys, str(out / "b.png"), "is a folder")

    # predicting a folder of PNGs into itself would replace the inputs with their label maps
    pngs = tmp_path / "pngs"
    save_image(pngs / "c.png", np.full((20, 24, 3), 90, np.uint8))
    Image.new("RGB", (8, 8), (1, 2, 3)).save(pngs / "d.png")
    before = {p.name: p.read_bytes() for p in pngs.iterdir()}
    assert main(["predict", str(model_dir), str(pngs), "--out", str(pngs)]) == 1
    capsys.readouterr()
    assert {p.name: p.read_bytes() for p in pngs.iterdir()} == before

    with pytest.raises(SegformerError, match="is a file, not a folder"):
        predict_files(segformer.Predictor(model_dir), [images], foreign_file(tmp_path / "f"), progress=False)


def as_a_user() -> list[str]:
    """The command prefix that makes a process respect file permissions: none for a user; for root
    (which ignores them), setpriv dropping the capabilities that override them."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


# Runs several `segformer` commands in one process (torch is imported once), optionally unable to
# write more than LIMIT bytes to any file: what a full disk looks like to a writer, for root too.
MANY = """
import json, resource, signal, sys
if {limit}:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from segformer.cli import main
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    print(f"<exit {{code}}>", file=sys.stderr, flush=True)
"""


def run_many(argvs: list[list[str]], limit: int = 0, prefix: tuple[str, ...] = ()) -> list[str]:
    """The stderr of each of `argvs` run in one process, after checking that each one failed."""
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", MANY.format(limit=limit), json.dumps(argvs)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        timeout=600,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    parts = re.split(r"<exit (\d+)>\n", proc.stderr)
    codes, errs = parts[1::2], parts[0::2][: len(argvs)]
    assert codes == ["1"] * len(argvs), proc.stderr
    return errs


def error_line(stderr: str, *needles: str) -> str:
    """The error message of a failed command: one line (progress bars aside) holding `needles`."""
    errors = re.findall(r"segformer [a-z]+: error: .*", stderr)
    assert len(errors) == 1, stderr
    assert all(needle in errors[0] for needle in needles), (needles, errors[0])
    return errors[0]


def test_a_read_only_folder_is_one_line(model_dir, faces, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        argvs = [
            ["convert", str(model_dir), "--out", str(parent / "m")],
            ["data", "synth", str(parent / "d"), "--num", "2", "--size", "32"],
            ["export", str(model_dir), "--out", str(parent / "m.onnx"), "--no-check"],
            ["train", "--data", str(faces), "--epochs", "1", "--out", str(parent / "run"), "--quiet"],
            ["predict", str(model_dir), str(faces / "val" / "images"), "--out", str(parent / "p")],
        ]
        for stderr in run_many(argvs, prefix=as_a_user()):
            error_line(stderr, str(parent), "Permission denied")
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(model_dir, faces, tmp_path):
    cases = [
        (["convert", str(model_dir), "--out", str(tmp_path / "m")], tmp_path / "m"),
        (["data", "synth", str(tmp_path / "d"), "--num", "3", "--size", "256"], tmp_path / "d"),
        (["export", str(model_dir), "--out", str(tmp_path / "m.onnx"), "--no-check"], tmp_path / "m.onnx"),
        (["export", str(model_dir), "--format", "ce7454", "--out", str(tmp_path)], tmp_path / "solution"),
    ]
    run = tmp_path.parent / f"{tmp_path.name}-run"  # training fails after writing its config
    sets = [f"model.{k}={json.dumps(v)}" for k, v in TINY_MODEL.items() if k != "name"]
    model = [x for s in sets for x in ("--set", s)]
    train_argv = ["train", "--data", str(faces), "--img-size", "32", "--epochs", "1", "--batch-size", "4"]
    train_argv += ["--workers", "0", "--out", str(run), "--quiet", *model]
    errs = run_many([argv for argv, _ in cases] + [train_argv], limit=4096)
    for (_, out), stderr in zip(cases, errs, strict=False):
        error_line(stderr, str(out), "File too large")
        assert not out.exists(), out
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary file or folder left
    error_line(errs[-1], str(run), "File too large")
    assert temp_leftovers(run) == [] and not (run / "last").exists() and not (run / "state.pt").exists()


def test_a_failed_torch_save_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    """torch.save reports a failed write as a bare RuntimeError; the system's reason still comes out."""
    path = tmp_path / "state.pt"
    full = pytest.raises(SegformerError, match=r"state\.pt: cannot write \(No space left on device\)")
    with full, atomic_file(path) as f:
        raw = f._f

        def write(data):
            if raw.tell() + len(data) > 100:  # the disk is full after 100 bytes
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return raw.write(data)

        monkeypatch.setattr(f, "_f", SimpleNamespace(write=write, flush=raw.flush))
        torch.save({"x": torch.zeros(1000)}, f)  # torch reports the failure as a RuntimeError
    assert sorted(tmp_path.iterdir()) == []


def test_ctrl_c_inside_torch_save_finishes_the_file_then_interrupts(tmp_path):
    """Ctrl-C landing in the middle of torch.save's zip writer made it raise "unexpected pos" over the
    interrupt: a traceback and no checkpoint. The interrupt now waits for the file to be in place."""
    import signal

    path = tmp_path / "state.pt"
    payload = {"x": torch.arange(50_000, dtype=torch.float32)}
    with pytest.raises(KeyboardInterrupt), atomic_file(path) as f:
        raw, sent = f._f, []

        class InterruptedOnce:  # the user presses Ctrl-C once the writer has started
            def write(self, data):
                if not sent:
                    sent.append(os.kill(os.getpid(), signal.SIGINT))
                return raw.write(data)

            def __getattr__(self, name):  # flush, closed, ...: the real file's
                return getattr(raw, name)

        f._f = InterruptedOnce()
        torch.save(payload, f)
    assert sent and torch.equal(torch.load(path, weights_only=True)["x"], payload["x"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_new_files_and_folders_follow_the_umask(umask, model_dir, tmp_path):
    files, folders = 0o666 & ~umask, 0o777 & ~umask
    old = os.umask(umask)
    try:
        segformer.save(segformer.load(model_dir), tmp_path / "m")
        write_synthetic_dataset(tmp_path / "d", num=2, size=32, progress=False)
        save_image(tmp_path / "img" / "a.png", np.zeros((8, 8, 3), np.uint8))
        predict_files(segformer.Predictor(model_dir), [tmp_path / "img"], tmp_path / "pred", progress=False)
    finally:
        os.umask(old)
    for path in [tmp_path / "m", tmp_path / "d", tmp_path / "d" / "train", tmp_path / "pred"]:
        assert stat.S_IMODE(path.stat().st_mode) == folders, (path, oct(path.stat().st_mode))
    for path in [
        tmp_path / "m" / "model.safetensors",
        tmp_path / "m" / "config.json",
        tmp_path / "d" / "dataset.json",
        tmp_path / "d" / "train" / "masks" / "synth_000001.png",
        tmp_path / "pred" / "a.png",
    ]:
        assert stat.S_IMODE(path.stat().st_mode) == files, (path, oct(path.stat().st_mode))


def test_a_real_process_prints_no_traceback(model_dir, tmp_path):
    out = foreign_folder(tmp_path / "out")
    proc = subprocess.run(
        [sys.executable, "-m", "segformer", "convert", str(model_dir), "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        timeout=300,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "notes.txt" in proc.stderr
    assert check_output_dir(tmp_path / "new", "model") == tmp_path / "new"


def test_what_the_writers_write_is_recognised_as_theirs(faces, tmp_path):
    """The ownership tables of fileio know every entry a finished run and a dataset hold."""
    summary = train(tiny_run(faces, epochs=1, batch_size=4, log_every=1), tmp_path / "run", progress=False)
    assert summary["epochs_completed"] == 1
    assert is_ours(tmp_path / "run", "run"), sorted(p.name for p in (tmp_path / "run").iterdir())
    assert is_ours(tmp_path / "run" / "best", "model")
    preview_dataset(faces, tmp_path / "prev", num=2, progress=False)
    fix_dataset(faces, tmp_path / "fixed", progress=False)
    for folder in ("prev", "fixed"):
        assert is_ours(tmp_path / folder, "dataset"), folder
    assert not is_ours(faces, "dataset")  # the user's own dataset (no dataset.json of ours)
