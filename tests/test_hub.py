"""Hugging Face Hub ids as model arguments, through huggingface_hub's own cache, and `segformer push`.

No network: a fake Hub answers huggingface_hub's HTTP calls in process (an httpx MockTransport behind
`huggingface_hub.set_client_factory`), so the cache under test is laid out by huggingface_hub itself
(``models--org--name/{refs, snapshots/<sha>, blobs}``). The offline tests then block sockets and set
``HF_HUB_OFFLINE=1``: what loads, loads from that cache.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

import segformer
from segformer import SegformerError
from segformer.checkpoint import is_hub_id, parse_hub_id, resolve_model
from segformer.cli import main
from segformer.models import build_model

from conftest import tiny_config

huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import ModelCard  # noqa: E402
from huggingface_hub.utils import _http  # noqa: E402

# The HTTP client huggingface_hub talks through (httpx2 in its 2.x releases, httpx in 1.x).
httpx2 = getattr(_http, "httpx2", None) or getattr(_http, "httpx", None)
if httpx2 is None or not hasattr(huggingface_hub, "set_client_factory"):
    pytest.skip("the fake Hub needs huggingface_hub >= 1.0 (httpx client)", allow_module_level=True)

NAMES = ("background", "skin", "hair", "eye", "mouth")


class FakeHub:
    """Model repositories in memory: ``repos[repo_id][revision] = (commit sha, {path: bytes})``,
    served as the Hub's API and ``resolve`` endpoints answer huggingface_hub."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, tuple[str, dict[str, bytes]]]] = {}
        self.requests: list[str] = []

    def publish(self, repo_id: str, folder: Path, revision: str = "main") -> str:
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        sha = hashlib.sha1(f"{repo_id}@{revision}".encode() + b"".join(files.values())).hexdigest()
        self.repos.setdefault(repo_id, {})[revision] = (sha, files)
        return sha

    def _lookup(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        for sha, files in self.repos.get(repo_id, {}).values():
            if revision == sha:
                return sha, files
        return self.repos.get(repo_id, {}).get(revision)

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        path = request.url.path
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path)
        m = m or re.fullmatch(r"/([^/]+/[^/]+)/(resolve)/([^/]+)/(.+)", path)
        if m is None:
            return httpx2.Response(404)
        repo_id, kind, revision = m[1], m[2], m[3]
        if repo_id not in self.repos:
            return httpx2.Response(404, headers={"X-Error-Code": "RepoNotFound"})
        found = self._lookup(repo_id, revision)
        if found is None:
            return httpx2.Response(404, headers={"X-Error-Code": "RevisionNotFound"})
        sha, files = found
        if kind == "revision":
            return httpx2.Response(200, json={"id": repo_id, "sha": sha, "siblings": []})
        if kind == "tree":
            listing = [
                {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for name, data in files.items()
            ]
            return httpx2.Response(200, json=listing)
        if m[4] not in files:
            return httpx2.Response(404, headers={"X-Error-Code": "EntryNotFound"})
        data = files[m[4]]
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
            "Content-Length": str(len(data)),
        }
        return httpx2.Response(200, headers=headers, content=b"" if request.method == "HEAD" else data)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fake Hub, an empty cache (``HF_HUB_CACHE``) and no token; online."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_PROGRESS_BARS", True, raising=False)
    fake = FakeHub()
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(fake)))
    _http.close_session()
    yield fake
    huggingface_hub.set_client_factory(_http.default_client_factory)
    _http.close_session()


def go_offline(monkeypatch) -> None:
    """``HF_HUB_OFFLINE=1``, no socket may connect, and huggingface_hub's real client again (the fake
    Hub unplugged): whatever loads now comes from the cache."""

    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    huggingface_hub.set_client_factory(_http.default_client_factory)
    _http.close_session()


def tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(tiny_config(class_names=NAMES)).eval()
    model.meta = {"image_size": 32}
    return model


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.linspace(-1, 1, 3 * 32 * 32).reshape(1, 3, 32, 32))


def publish(hub: FakeHub, tmp_path: Path, repo_id: str, model, revision: str = "main", **save) -> str:
    folder = tmp_path / "publish" / repo_id / revision
    segformer.save(model, folder, **save)
    return hub.publish(repo_id, folder, revision)


def test_ids_are_told_from_paths_and_tags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_hub_id("org/name") == ("org/name", None)
    assert parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    assert parse_hub_id("org/name@refs/pr/3") == ("org/name", "refs/pr/3")
    for not_id in (
        "microsegformer-celebamask", "name", "runs/best.pth", "photos/a.jpg", "a/b/c", "./org/name",
        "/abs/name", "org/na--me", "org/", "org/name@", "org/name.git",
    ):  # fmt: skip
        assert not is_hub_id(not_id), not_id
    (tmp_path / "runs" / "best").mkdir(parents=True)
    assert parse_hub_id("runs/best") and not is_hub_id("runs/best")  # an existing path wins


def test_load_by_id_and_revision_then_offline_from_the_cache(hub, tmp_path, monkeypatch):
    main_model, v1_model = tiny(0), tiny(1)
    publish(hub, tmp_path, "org/tiny", main_model)
    v1_sha = publish(hub, tmp_path, "org/tiny", v1_model, revision="v1")

    online = {ref: segformer.load(ref) for ref in ("org/tiny", "org/tiny@v1")}
    assert torch.equal(logits(online["org/tiny"]), logits(main_model))
    assert torch.equal(logits(online["org/tiny@v1"]), logits(v1_model))
    assert online["org/tiny"].config.class_names == NAMES
    # huggingface_hub's own layout: refs name commits, snapshots link into blobs.
    repo = tmp_path / "hf-cache" / "models--org--tiny"
    assert (repo / "refs" / "v1").read_text() == v1_sha
    snapshot = repo / "snapshots" / v1_sha
    assert (snapshot / "config.json").is_symlink() and (snapshot / "model.safetensors").is_file()
    assert resolve_model("org/tiny@v1") == snapshot

    go_offline(monkeypatch)
    requests = len(hub.requests)
    for ref, model in (("org/tiny", main_model), ("org/tiny@v1", v1_model), (f"org/tiny@{v1_sha}", v1_model)):
        assert torch.equal(logits(segformer.load(ref)), logits(model)), ref
    assert len(hub.requests) == requests  # nothing asked the Hub
    mask = segformer.Predictor("org/tiny@v1", faces=False).predict(np.zeros((40, 30, 3), np.uint8))
    assert mask.shape == (40, 30)


def test_missing_id_offline_is_one_line_with_the_fetch_command(hub, monkeypatch, capsys):
    go_offline(monkeypatch)
    with pytest.raises(SegformerError) as err:
        segformer.load("org/absent@v2")
    message = str(err.value)
    assert "\n" not in message and "HF_HUB_OFFLINE" in message
    assert "`hf download org/absent --revision v2`" in message
    assert main(["info", "org/absent"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segformer info: error: org/absent: no local path")


def test_unknown_repo_or_revision_online_is_one_line_never_another_model(hub, tmp_path):
    publish(hub, tmp_path, "org/tiny", tiny(0))
    for ref, says in (("org/nothing", "was not found"), ("org/tiny@nope", "has no revision 'nope'")):
        with pytest.raises(SegformerError, match=says) as err:
            segformer.load(ref)
        assert "\n" not in str(err.value)


def test_a_transformers_directory_loads_by_id(hub, tmp_path):
    model = tiny(2)
    with pytest.warns(UserWarning, match="LayerNorm eps"):
        publish(hub, tmp_path, "nvidia-like/tiny-hf", model, format="hf")
    loaded = segformer.load("nvidia-like/tiny-hf")
    assert loaded.meta["source"] == "nvidia-like/tiny-hf" and loaded.meta["source_format"] == "hf"
    assert loaded.config.class_names == NAMES
    # transformers' LayerNorm eps is fixed at 1e-5 (the warning): near, not equal.
    assert torch.allclose(logits(loaded), logits(model), atol=1e-3)


def test_local_path_wins_over_an_id(hub, tmp_path, monkeypatch):
    publish(hub, tmp_path, "org/tiny", tiny(0))
    monkeypatch.chdir(tmp_path)
    local = tiny(3)
    segformer.save(local, tmp_path / "org" / "tiny")
    assert torch.equal(logits(segformer.load("org/tiny")), logits(local))
    assert hub.requests == []


def test_commands_take_ids(hub, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    publish(hub, tmp_path, "org/tiny", tiny(0))
    resolve_model("org/tiny")  # cached while online, used offline
    go_offline(monkeypatch)
    assert main(["info", "org/tiny", "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("org/tiny  (5 classes") and re.search(r"^\s+4  mouth\s+#", out, re.MULTILINE)
    assert "licence: no model card" in out
    onnx = tmp_path / "m.onnx"
    assert main(["export", "org/tiny", "--format", "onnx", "--out", str(onnx), "--no-check"]) == 0
    assert segformer.Predictor(onnx, faces=False).predict(np.zeros((40, 30, 3), np.uint8)).shape == (40, 30)


def test_a_converted_directory_runs_in_transformers_pipeline(tmp_path):
    """`segformer convert --to hf` writes what transformers' image-segmentation pipeline needs (the
    model, its config and the image processor's preprocessor_config.json)."""
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    segformer.save(tiny(4), tmp_path / "native")
    with pytest.warns(UserWarning, match="LayerNorm eps"):
        assert main(["convert", str(tmp_path / "native"), "--out", str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert (tmp_path / "hf" / "preprocessor_config.json").is_file()
    pipe = transformers.pipeline("image-segmentation", model=str(tmp_path / "hf"))
    assert pipe.image_processor.size == {"height": 32, "width": 32}
    out = pipe(Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)))
    assert {o["label"] for o in out} <= set(NAMES) and out[0]["mask"].size == (30, 40)


# -- push --


@pytest.fixture
def uploads(monkeypatch):
    """`HfApi.create_repo` / `upload_folder` replaced by recorders that keep the uploaded files."""
    calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def create_branch(self, repo_id, **kwargs):
        calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        files = {p.name: p.read_bytes() for p in Path(kwargs["folder_path"]).iterdir()}
        calls.append(("upload_folder", {**kwargs, "files": files}))
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc",
            commit_message=kwargs["commit_message"],
            commit_description="",
            oid="abc",
        )

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return calls


def test_push_uploads_the_model_directory_and_its_card(uploads, tmp_path, capsys):
    model = tiny(0)
    model.meta = {**model.meta, "scores": {"miou": 0.5, "ce7454_f": 0.6}, "epoch": 3}
    segformer.save(model, tmp_path / "run" / "best")
    assert main(["push", str(tmp_path / "run" / "best"), "me/tiny-faces", "--private"]) == 0
    assert "https://huggingface.co/me/tiny-faces" in capsys.readouterr().out
    (create, create_args), (upload, upload_args) = uploads
    assert create == "create_repo" and create_args["repo_id"] == "me/tiny-faces" and create_args["private"]
    assert upload == "upload_folder" and upload_args["repo_id"] == "me/tiny-faces"
    files = upload_args["files"]
    assert set(files) == {"config.json", "model.safetensors", "README.md"}
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "segformer" and card.data.pipeline_tag == "image-segmentation"
    scores = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert scores == {"mean_iou": 0.5, "f1": 0.6}
    assert 'segformer.load("me/tiny-faces")' in card.text
    # What was pushed loads back as the model.
    (tmp_path / "pushed").mkdir()
    for name, data in files.items():
        (tmp_path / "pushed" / name).write_bytes(data)
    assert torch.equal(logits(segformer.load(tmp_path / "pushed")), logits(model))


def test_push_keeps_a_models_own_card_and_its_measured_scores(uploads, capsys):
    assert main(["push", "microsegformer-celebamask", "me/faces", "--revision", "v1"]) == 0
    assert [name for name, _ in uploads] == ["create_repo", "create_branch", "upload_folder"]
    assert uploads[1][1] == {"repo_id": "me/faces", "branch": "v1", "exist_ok": True}
    upload_args = uploads[2][1]
    assert upload_args["revision"] == "v1"
    card = ModelCard(upload_args["files"]["README.md"].decode())
    assert card.data.license == "other" and card.data.license_name == "celebamask-hq"
    assert card.data.model_name == "me/faces"
    assert {r.metric_name: r.metric_value for r in card.data.eval_results} == {
        "CE7454 F-score": 0.8035,
        "mIoU": 0.6095,
    }
    assert card.text.lstrip().startswith("# microsegformer-celebamask\n") and "## Known limits" in card.text
    config = json.loads(upload_args["files"]["config.json"])
    assert config["format"] == "segformer" and "source" not in config["meta"]


def test_push_hf_format_is_a_transformers_repository(uploads, tmp_path):
    segformer.save(tiny(0), tmp_path / "m")
    with pytest.warns(UserWarning, match="LayerNorm eps"):
        assert main(["push", str(tmp_path / "m"), "me/tiny-hf", "--format", "hf", "--license", "mit"]) == 0
    files = uploads[1][1]["files"]
    assert set(files) == {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"}
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "transformers" and card.data.license == "mit"
    assert 'pipeline("image-segmentation", model="me/tiny-hf")' in card.text


def test_push_refuses_offline_and_bad_ids(uploads, tmp_path, monkeypatch, capsys):
    segformer.save(tiny(0), tmp_path / "m")
    assert main(["push", str(tmp_path / "m"), "not-an-id"]) == 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(tmp_path / "m"), "me/x"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert (
        len(errors) == 2 and "not a Hugging Face Hub model id" in errors[0] and "HF_HUB_OFFLINE" in errors[1]
    )
    assert uploads == []


def test_predict_takes_an_id_as_its_model_argument(hub, tmp_path, monkeypatch):
    from segformer.cli.predict import split_model_and_inputs

    monkeypatch.chdir(tmp_path)
    assert split_model_and_inputs(["org/tiny", "a.jpg"]) == ("org/tiny", ["a.jpg"])
    # An input is never taken for an id: file names, globs, existing folders.
    (tmp_path / "photos" / "today").mkdir(parents=True)
    for inputs in (["photos/a.jpg", "b.png"], ["photos/*.jpg"], ["photos/today"]):
        assert split_model_and_inputs(inputs)[1] == inputs


def test_hf_home_places_the_cache(hub, tmp_path, monkeypatch):
    publish(hub, tmp_path, "org/tiny", tiny(0))
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert resolve_model("org/tiny").is_relative_to(tmp_path / "home" / "hub" / "models--org--tiny")
    assert not (tmp_path / "hf-cache").exists()
