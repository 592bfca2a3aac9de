"""`segformer serve` in process (FastAPI's test client): every endpoint, every refusal, and the label map
equal to `segformer predict`'s byte for byte. The real server under load is tests/test_serve_load.py,
the page in a browser tests/test_serve_browser.py."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from segformer import Predictor, create_model, save
from segformer.cli import main
from segformer.data.labels import CELEBAMASK
from segformer.data.synthetic import generate_face
from segformer.errors import SegformerError
from segformer.serve import ServeConfig, create_app, model_card
from segformer.serve.batcher import Batcher
from segformer.serve.uploads import ApiError, read_upload

from conftest import tiny_config

# PyTorch: no ONNX export per app. The byte-for-byte test runs the default backend on both sides.
BACKEND = "torch"
LIMITS = dict(max_upload_mb=0.25, max_pixels=200_000, queue_size=4, max_batch=4, timeout=20.0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A random-weight face parser (CelebAMask-HQ classes) working at 48 px."""
    torch.manual_seed(3)
    out = tmp_path_factory.mktemp("serve") / "tiny"
    save(
        create_model(tiny_config("micro", num_classes=19)),
        out,
        meta={"label_set": "celebamask", "image_size": 48},
    )
    return out


@pytest.fixture(scope="module")
def client(model_dir):
    app = create_app(Predictor(model_dir, backend=BACKEND), ServeConfig(**LIMITS), name="tiny")
    with TestClient(app) as c:
        _wait_ready(c)
        yield c


def _wait_ready(c: TestClient) -> None:
    deadline = time.monotonic() + 30
    while c.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.02)


def _png(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _face(size: int = 80, seed: int = 0) -> np.ndarray:
    return generate_face(np.random.default_rng(seed), size)[0]


def _images(tmp_path: Path) -> dict[str, Path]:
    """Files of the kinds a camera or an editor writes: PNG, JPEG turned by its EXIF tag, RGBA, grey."""
    face = _face(72)
    paths = {name: tmp_path / name for name in ("face.png", "rotated.jpg", "alpha.png", "grey.png")}
    Image.fromarray(face[:, :60]).save(paths["face.png"])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers (and load_image) rotate it
    Image.fromarray(face[:50]).save(paths["rotated.jpg"], quality=90, exif=exif)
    Image.fromarray(np.dstack([face, np.full(face.shape[:2], 150, np.uint8)]), "RGBA").save(
        paths["alpha.png"]
    )
    Image.fromarray(face[..., 1], "L").save(paths["grey.png"])
    return paths


def _error(response, status: int) -> str:
    """The one-line JSON error of a refusal."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and body["error"]
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


@pytest.mark.parametrize("faces", [True, False], ids=["faces", "whole-image"])
def test_label_maps_and_overlays_are_what_predict_writes(model_dir, client, tmp_path, faces):
    paths = _images(tmp_path)
    out = tmp_path / "out"
    flags = ["--backend", BACKEND] + ([] if faces else ["--whole-image"])  # the server's settings
    assert (
        main(
            [
                "predict",
                str(model_dir),
                *map(str, paths.values()),
                "--out",
                str(out),
                "--overlay",
                "--quiet",
                *flags,
            ]
        )
        == 0
    )
    query = "" if faces else "?faces=0"
    for name, path in paths.items():
        if faces and name in ("alpha.png", "grey.png"):
            continue  # decoding is the same either way: the whole-image case covers them
        data = path.read_bytes()
        kind = "image/jpeg" if name.endswith(".jpg") else "image/png"
        expected = (out / f"{path.stem}.png").read_bytes()
        multipart = client.post(f"/v1/parse{query}", files={"image": (name, data, kind)})
        raw = client.post(f"/v1/parse{query}", content=data, headers={"content-type": kind})
        assert multipart.status_code == raw.status_code == 200
        assert multipart.headers["content-type"] == "image/png"
        assert multipart.content == expected, name
        assert raw.content == expected, name
        sep = "&" if query else "?"
        overlay = client.post(
            f"/v1/parse{query}{sep}output=overlay", content=data, headers={"content-type": kind}
        )
        assert overlay.content == (out / "overlays" / f"{path.stem}.png").read_bytes(), name
    if not faces:  # a random model's whole-image parse: the bytes above compared real labels
        labels = np.asarray(Image.open(out / "face.png"))
        assert len(np.unique(labels)) > 1


def test_json_and_parts(client):
    face = _face(64)
    data = _png(face)
    label = client.post("/v1/parse?faces=0", content=data, headers={"content-type": "image/png"}).content
    ids = np.asarray(Image.open(io.BytesIO(label)))
    summary = client.post("/v1/parse?output=json&faces=0", files={"image": ("f.png", data)}).json()
    assert (summary["width"], summary["height"]) == (64, 64)
    assert summary["whole_image"] is True and summary["faces"] == []
    counts = np.bincount(ids.ravel(), minlength=19)
    assert {c["id"]: c["pixels"] for c in summary["classes"]} == {
        i: int(n) for i, n in enumerate(counts) if n
    }
    for c in summary["classes"]:
        assert c["name"] == CELEBAMASK.class_names[c["id"]] and c["color"] == list(
            CELEBAMASK.palette[c["id"]]
        )
    parts = client.post("/v1/parse?output=parts&faces=0", files={"image": ("f.png", data)}).json()
    assert base64.b64decode(parts["label_map"]) == label
    assert Image.open(io.BytesIO(base64.b64decode(parts["overlay"]))).size == (64, 64)
    assert set(parts["masks"]) == {str(c["id"]) for c in summary["classes"]}
    for key, b64 in parts["masks"].items():
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))
        np.testing.assert_array_equal(mask, (ids == int(key)) * 255)
    # With face finding on (this random model finds no face): all background, and the reason said.
    found = client.post("/v1/parse?output=json", files={"image": ("f.png", data)}).json()
    assert "faces" in found and ("warning" in found or found["faces"])


def test_model_health_ready_docs_and_page(client):
    info = client.get("/v1/model").json()
    assert info["name"] == "tiny" and info["faces"] is True
    assert [c["name"] for c in info["label_set"]["classes"]] == list(CELEBAMASK.class_names)
    assert [tuple(c["color"]) for c in info["label_set"]["classes"]] == list(CELEBAMASK.palette)
    assert info["settings"]["image_size"] == 48 and info["server"]["max_pixels"] == LIMITS["max_pixels"]
    assert "token" not in info["server"] and info["server"]["token_required"] is False
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").json() == {"status": "ready"}
    spec = client.get("/openapi.json").json()
    assert {"/v1/parse", "/v1/model", "/healthz", "/readyz"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/parse"]["post"]["requestBody"]["content"]
    for path in ("/", "/docs", "/static/app.js", "/static/docs.js", "/static/style.css"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        # Offline: nothing is loaded from another host.
        assert not re.search(
            r"""(src|href)\s*=\s*["'](https?:)?//|fetch\(["'`]https?:|@import|url\(""", page.text
        ), path
    assert 'id="file"' in client.get("/").text
    _error(client.get("/static/../app.py"), 404)
    # The shipped model's card is served; a model without one has none.
    assert info["card"] is None and "CelebAMask" in (model_card("microsegformer-celebamask") or "")


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims `width` x `height` (a decompression bomb's header)."""
    data = _png(np.zeros((1, 1, 3), np.uint8))
    ihdr = struct.pack(">II", width, height) + data[24:29]
    return data[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + data[33:]


def _multipart(fields: list[tuple[str, bytes]], boundary: str = "b0undary") -> tuple[bytes, str]:
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="x.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + value
        + b"\r\n"
        for name, value in fields
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


HOSTILE = {
    # name: (content type, body, expected status, words in the error)
    "text body": ("text/plain", b"hello", 415, "content type text/plain"),
    "no content type": ("", b"hello", 415, "content type none"),
    "not an image": ("image/png", b"GIF89a-but-not-really" * 10, 415, "not an image"),
    "svg": ("image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg'/>", 415, "not an image"),
    "empty": ("image/png", b"", 400, "empty image"),
    "truncated jpeg": ("image/jpeg", _jpeg(_face(64))[:1500], 400, "truncated or corrupt"),
    "broken header": ("image/jpeg", _jpeg(_face(64))[:300], 400, "cannot read the image header"),
    "pixels over the limit": ("image/png", _png_claiming(5000, 5000), 413, "--max-pixels"),
    "decompression bomb": ("image/png", _png_claiming(100_000, 100_000), 413, "too large"),
    "upload over the limit": (
        "image/png",
        b"\0" * (int(LIMITS["max_upload_mb"] * 2**20) + 1),
        413,
        "--max-upload-mb",
    ),
    "multipart without image": (*reversed(_multipart([("file", b"x")])), 400, "no field named 'image'"),
    "two images": (*reversed(_multipart([("image", b"x"), ("image", b"y")])), 400, "one image per request"),
    "no boundary": ("multipart/form-data", b"x", 400, "boundary"),
    "malformed multipart": ("multipart/form-data; boundary=zz", b"--zz\r\ngarbage", 400, "field named"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_uploads_get_a_4xx_and_one_line(client, name):
    kind, body, status, words = HOSTILE[name]
    headers = {"content-type": kind} if kind else {}
    message = _error(client.post("/v1/parse", content=body, headers=headers), status)
    assert words in message
    assert client.get("/healthz").json()["pending"] == 0  # every refusal gave its place back


def test_bad_queries_and_routes(client, model_dir):
    data = _png(_face(40))
    assert "output" in _error(
        client.post("/v1/parse?output=svg", content=data, headers={"content-type": "image/png"}), 400
    )
    assert "faces" in _error(
        client.post("/v1/parse?faces=maybe", content=data, headers={"content-type": "image/png"}), 400
    )
    _error(client.get("/v1/parse"), 405)
    _error(client.get("/nowhere"), 404)
    _error(
        client.post("/v1/parse", content=data, headers={"content-type": "image/png", "content-length": "x"}),
        400,
    )
    whole = create_app(Predictor(model_dir, faces=False, backend=BACKEND), ServeConfig(**LIMITS))
    with TestClient(whole) as c:
        assert "parses images whole" in _error(
            c.post("/v1/parse?faces=1", content=data, headers={"content-type": "image/png"}), 400
        )


def test_a_token_guards_every_api_call(model_dir):
    app = create_app(Predictor(model_dir, backend=BACKEND), ServeConfig(token="s3cret", **LIMITS))
    data = _png(_face(40))
    with TestClient(app) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = c.post("/v1/parse", content=data, headers={"content-type": "image/png", **headers})
            assert "token" in _error(r, 401) and r.headers["www-authenticate"] == "Bearer"
            _error(c.get("/v1/model", headers=headers), 401)
        auth = {"Authorization": "Bearer s3cret"}
        assert (
            c.post("/v1/parse", content=data, headers={"content-type": "image/png", **auth}).status_code
            == 200
        )
        assert c.get("/v1/model", headers=auth).json()["server"]["token_required"] is True
        # Probes and the page stay open (the page asks for the token).
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
        # A 401 comes before the upload is looked at.
        _error(c.post("/v1/parse", content=b"x" * 10**6, headers={"content-type": "text/plain"}), 401)


def test_cors_is_off_unless_asked(model_dir):
    preflight = {"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(Predictor(model_dir, backend=BACKEND), ServeConfig(**LIMITS))) as c:
        assert "access-control-allow-origin" not in c.options("/v1/parse", headers=preflight).headers
    config = ServeConfig(cors_origins=("http://elsewhere.example",), **LIMITS)
    with TestClient(create_app(Predictor(model_dir, backend=BACKEND), config)) as c:
        allowed = c.options("/v1/parse", headers=preflight).headers
        assert allowed["access-control-allow-origin"] == "http://elsewhere.example"


class _Gated:
    """A Predictor whose forward passes wait for `gate` (a model thread kept busy on purpose)."""

    def __init__(self, predictor: Predictor) -> None:
        self._p = predictor
        self.gate = threading.Event()
        self.gate.set()

    def __getattr__(self, name):
        if name == "_p":  # not set yet (a copy being made)
            raise AttributeError(name)
        return getattr(self._p, name)

    def predict_arrays(self, *args, **kwargs):
        assert self.gate.wait(20)
        return self._p.predict_arrays(*args, **kwargs)


def test_a_full_queue_answers_503_and_a_slow_result_504(model_dir):
    gated = _Gated(Predictor(model_dir, faces=False, backend=BACKEND))
    app = create_app(gated, ServeConfig(**{**LIMITS, "queue_size": 2, "timeout": 1.0}))
    data = _png(_face(40))
    post = {"content": data, "headers": {"content-type": "image/png"}}
    with TestClient(app) as c:
        _wait_ready(c)
        gated.gate.clear()
        answers: list = []
        waiting = [
            threading.Thread(target=lambda: answers.append(c.post("/v1/parse", **post))) for _ in range(2)
        ]
        for t in waiting:
            t.start()
        deadline = time.monotonic() + 10
        while c.get("/healthz").json()["pending"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        busy = c.post("/v1/parse", **post)
        assert "--queue-size" in _error(busy, 503) and int(busy.headers["retry-after"]) >= 1
        for t in waiting:
            t.join()
        assert sorted(r.status_code for r in answers) == [504, 504]  # the gate outlasted the time limit
        assert "--timeout" in _error(answers[0], 504)
        # The abandoned jobs keep their places until the model thread is done with them.
        assert c.get("/healthz").json()["pending"] == 2
        gated.gate.set()
        while c.get("/healthz").json()["pending"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert c.post("/v1/parse", **post).status_code == 200


def test_the_batcher_batches_within_its_bounds():
    seen: list[int] = []
    release = threading.Event()

    def run(items, answer):
        release.wait(5)
        seen.append(len(items))
        for i, item in enumerate(items):
            answer(i, item * 2, None)

    async def scenario():
        batcher = Batcher(run, max_batch=3, max_wait=0.05, capacity=10)
        batcher.start()
        tickets = [batcher.admit() for _ in range(7)]
        tasks = [asyncio.ensure_future(t.run(i, 5.0)) for i, t in enumerate(tickets)]
        await asyncio.sleep(0.2)
        release.set()
        results = await asyncio.gather(*tasks)
        for t in tickets:
            t.close()
        assert batcher.pending == 0
        await batcher.stop()
        return results

    assert asyncio.run(scenario()) == [0, 2, 4, 6, 8, 10, 12]
    assert max(seen) <= 3 and sum(seen) == 7 and seen[1] == 3  # the first ran alone, then full batches


def test_an_upload_over_the_limit_is_refused_before_it_is_read_in_full():
    sent = []

    async def body():
        for _ in range(100):
            sent.append(1)
            yield b"\0" * 1024

    async def read():
        await read_upload("image/png", None, body(), limit=10 * 1024)

    with pytest.raises(ApiError) as err:
        asyncio.run(read())
    assert err.value.status == 413 and len(sent) == 11
    with pytest.raises(ApiError) as err:  # a declared length over the limit: no byte read
        asyncio.run(read_upload("image/png", str(10**9), body(), limit=1024))
    assert err.value.status == 413 and len(sent) == 11


def test_listening_beyond_loopback_needs_a_token(model_dir, capsys):
    assert ServeConfig(host="127.0.0.1").check() == [] and ServeConfig(host="::1").check() == []
    with pytest.raises(SegformerError, match=r"refusing to listen on 0\.0\.0\.0 without a token"):
        ServeConfig(host="0.0.0.0").check()
    assert ServeConfig(host="0.0.0.0", token="t").check() == []
    assert "without a token" in ServeConfig(host="0.0.0.0", no_token=True).check()[0]
    with pytest.raises(SegformerError, match="contradict"):
        ServeConfig(token="t", no_token=True).check()
    # The command refuses before loading the model.
    assert main(["serve", str(model_dir / "missing"), "--host", "0.0.0.0"]) == 1
    assert "refusing to listen on 0.0.0.0" in capsys.readouterr().err
    assert json.dumps(ServeConfig(token="t").public()).count("token") == 1  # token_required, not the token
