"""A real `segformer serve` on loopback under a bounded load: no failure but the deliberate 503s, /healthz
answering throughout, memory growth bounded, and Ctrl-C / SIGTERM draining the requests in flight and
exiting 0. A random-weight model at 48 px keeps it to seconds."""

from __future__ import annotations

import io
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from segformer import create_model, save  # noqa: E402
from segformer.data.synthetic import generate_face  # noqa: E402
from serve_process import start_server  # noqa: E402

from conftest import tiny_config  # noqa: E402

pytestmark = pytest.mark.serve_load

REQUESTS = 240
CONCURRENCY = 12
QUEUE = 16  # above the load's concurrency: only the burst at the end overflows it
BURST = 40


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(4)
    out = tmp_path_factory.mktemp("load") / "tiny"
    save(
        create_model(tiny_config("micro", num_classes=19)),
        out,
        meta={"label_set": "celebamask", "image_size": 48},
    )
    return out


def _png(size: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(generate_face(np.random.default_rng(seed), size)[0]).save(buffer, format="PNG")
    return buffer.getvalue()


def _drain(server, sig: int, big: bytes, n: int = 6) -> None:
    """Send `n` slow requests and signal the server once some are in flight: every request the server
    received is answered 200 (one sent after the signal may find the port closed, or be dropped from the
    listen backlog, never half answered), and it exits 0."""
    answers: list = []

    def post() -> None:
        with httpx.Client(timeout=60) as c:
            try:
                answers.append(c.post(f"{server.url}/v1/parse?faces=0", files={"image": ("big.png", big)}))
            except httpx.TransportError as err:  # not received: connection refused or reset
                answers.append(err)

    before = server.log.read_text().count("POST /v1/parse?faces=0")
    threads = [threading.Thread(target=post) for _ in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    with httpx.Client(timeout=10) as c:
        while c.get(f"{server.url}/healthz").json()["pending"] < n // 2:
            assert time.monotonic() < deadline, "the slow requests never arrived"
            time.sleep(0.005)
    assert server.stop(sig) == 0
    for t in threads:
        t.join(60)
    answered = [a.status_code for a in answers if isinstance(a, httpx.Response)]
    assert len(answers) == n and answered == [200] * len(answered) and len(answered) >= n // 2, answers
    log = server.log.read_text()
    assert log.count("POST /v1/parse?faces=0 200") - before == len(answered)  # none received was lost
    assert "draining the requests in flight" in log


def test_a_bounded_load_then_ctrl_c(model_dir, tmp_path):
    # Whole-image parses: the server's machinery is under test here, not face finding (test_serve.py).
    options = ["--threads", "1", "--queue-size", str(QUEUE), "--max-batch", "4", "--max-wait-ms", "2"]
    options += ["--whole-image", "--backend", "torch"]
    server = start_server(str(model_dir), *options, log=tmp_path / "server.log")
    try:
        images = [_png(64 + 8 * i, seed=i) for i in range(4)]
        local = threading.local()
        health: list[tuple[int, float]] = []
        done = threading.Event()

        def client() -> httpx.Client:
            if not hasattr(local, "client"):
                local.client = httpx.Client(timeout=30)
            return local.client

        def parse(i: int) -> tuple[int, int, bytes, str | None]:
            r = client().post(f"{server.url}/v1/parse", files={"image": ("face.png", images[i % 4])})
            return i % 4, r.status_code, r.content, r.headers.get("retry-after")

        def watch() -> None:
            with httpx.Client(timeout=10) as c:
                while not done.is_set():
                    start = time.perf_counter()
                    status = c.get(f"{server.url}/healthz").status_code
                    health.append((status, time.perf_counter() - start))
                    time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            warm = list(pool.map(parse, range(40)))
            rss_warm = server.rss_mb()
            results = warm + list(pool.map(parse, range(40, REQUESTS)))
        rss_end = server.rss_mb()
        with ThreadPoolExecutor(BURST) as pool:  # more at once than the queue holds: deliberate 503s
            burst = list(pool.map(parse, range(BURST)))
        done.set()
        watcher.join()

        assert [status for _, status, _, _ in results] == [200] * REQUESTS
        statuses = [status for _, status, _, _ in burst]
        assert set(statuses) <= {200, 503} and statuses.count(200) >= QUEUE // 2, statuses
        assert all(retry and int(retry) >= 1 for _, status, _, retry in burst if status == 503)
        labels: dict[int, set[bytes]] = {}
        for i, status, body, _ in results + burst:
            if status == 200:
                labels.setdefault(i, set()).add(body)
        assert all(len(v) == 1 for v in labels.values())  # batching never changes a label map
        assert health and all(status == 200 for status, _ in health)
        assert max(seconds for _, seconds in health) < 3.0
        assert rss_end - rss_warm < 64, f"memory grew {rss_end - rss_warm:.0f} MB under load"
        log = server.log.read_text()
        assert log.count("POST /v1/parse") == REQUESTS + BURST  # one line per request, 503s included
        assert "Traceback" not in log

        _drain(server, signal.SIGINT, _png(320, seed=9))
    finally:
        server.close()


def test_sigterm_drains_and_exits_0(model_dir, tmp_path):
    options = ["--threads", "1", "--whole-image", "--backend", "torch"]
    server = start_server(str(model_dir), *options, log=tmp_path / "server.log")
    try:
        _drain(server, signal.SIGTERM, _png(320, seed=9), n=3)
    finally:
        server.close()
