"""Loading never runs pickled code: malicious or non-tensor ``.pth`` / ``.bin`` files are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import segformer
from segformer import SegformerError
from segformer.convert import native_to_original

from conftest import SRC, run_cli, tiny_config


class Payload:
    """Unpickling this object runs ``exec``, which writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def malicious_checkpoint(path, marker) -> None:
    state = native_to_original(segformer.create_model(tiny_config()).state_dict())
    torch.save({"meta": {"note": Payload(marker)}, "state_dict": state}, path)


def test_the_payload_is_live(tmp_path):
    """Guard for the tests below: unsafe loading really does execute the payload."""
    marker = tmp_path / "marker"
    malicious_checkpoint(tmp_path / "evil.pth", marker)
    torch.load(tmp_path / "evil.pth", weights_only=False)
    assert marker.read_text() == "pwned"


def test_malicious_pth_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker"
    malicious_checkpoint(tmp_path / "evil.pth", marker)
    with pytest.raises(
        SegformerError, match=r"evil\.pth: refused: unpickling it needs the object exec.*arbitrary code"
    ):
        segformer.load(tmp_path / "evil.pth", num_heads=(1, 2, 3, 4))
    assert not marker.exists()

    result = run_cli("convert", str(tmp_path / "evil.pth"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "refused" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_malicious_pytorch_model_bin_in_an_hf_directory_is_refused(tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "segformer"}))
    torch.save({"x": Payload(marker)}, tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(SegformerError, match=r"pytorch_model\.bin: refused"):
        segformer.load(tmp_path / "hf")
    assert not marker.exists()


def test_non_tensor_objects_are_refused_not_loaded_unsafely(tmp_path):
    """mmseg meta sometimes holds arbitrary objects; there is no fallback to weights_only=False."""
    np = pytest.importorskip("numpy")
    state = native_to_original(segformer.create_model(tiny_config()).state_dict())
    torch.save({"meta": {"palette": np.zeros(3)}, "state_dict": state}, tmp_path / "np.pth")
    with pytest.raises(SegformerError, match=r"np\.pth: refused: unpickling it needs the object numpy"):
        segformer.load(tmp_path / "np.pth")


def test_files_that_are_not_checkpoints_are_reported(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SegformerError, match=r"junk\.pth: cannot read as a PyTorch checkpoint"):
        segformer.load(tmp_path / "junk.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(SegformerError, match=r"list\.pth: no state dict found"):
        segformer.load(tmp_path / "list.pth")


def test_runtime_never_imports_transformers(tmp_path):
    segformer.save(segformer.create_model(tiny_config(norm_eps=1e-5, embed_norm_eps=1e-5)), tmp_path / "m")
    code = (
        "import sys, segformer; "
        f"m = segformer.load({str(tmp_path / 'm')!r}); "
        f"segformer.save(m, {str(tmp_path / 'hf')!r}, format='hf'); "
        f"segformer.load({str(tmp_path / 'hf')!r}); "
        "assert 'transformers' not in sys.modules, 'transformers was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert result.returncode == 0, result.stderr
