"""`segformer serve` against `segformer predict` on the same images and settings, side by side in one run
on loopback: images/s of each, the server's p50 / p95 latency at the given concurrency, and whether
every label map the server answered is byte for byte the one predict wrote.

Target: the server at concurrency 8 makes >= 0.9x the images/s of `segformer predict`.

    python benchmarks/bench_serve.py --threads 1                     # shipped face parser, 32 faces
    python benchmarks/bench_serve.py MODEL --images 64 --size 512 --concurrency 8 --tta flip

Both sides run in subprocesses with the same flags. predict's rate is the one it prints (reading,
parsing and writing; model loading excluded); the server's is wall time from the first request sent to
the last answer received, after a warm-up round. The default backend is PyTorch: with ``auto`` predict
would count its one-off ONNX export in its time and flatter the server.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from segformer.data.synthetic import generate_face

SRC = Path(__file__).resolve().parents[1] / "src"
TARGET = 0.9


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def make_images(folder: Path, count: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"face{i:03d}.jpg"
        Image.fromarray(generate_face(np.random.default_rng(i), size)[0]).save(path, quality=92)
        paths.append(path)
    return paths


def run_predict(model: list[str], folder: Path, out: Path, flags: list[str]) -> float:
    """images/s as `segformer predict` reports it."""
    cmd = [
        sys.executable,
        "-m",
        "segformer",
        "predict",
        *model,
        str(folder),
        "--out",
        str(out),
        "--quiet",
        *flags,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=False)
    match = re.search(r"\(([\d.]+) images/s\)", done.stdout)
    if done.returncode != 0 or not match:
        sys.exit(f"predict failed:\n{done.stdout}\n{done.stderr}")
    return float(match.group(1))


def start_server(model: list[str], flags: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "segformer", "serve", *model, "--port", "0", *flags]
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=_env())
    line = proc.stdout.readline()
    match = re.search(r"on (http://\S+:\d+)", line)
    if not match:
        proc.kill()
        sys.exit(f"the server did not start:\n{line}{log.read_text()}")
    url = match.group(1)
    with httpx.Client(timeout=10) as c:
        while c.get(f"{url}/readyz").status_code != 200:
            time.sleep(0.05)
    return proc, url


def run_serve(
    url: str, paths: list[Path], concurrency: int
) -> tuple[float, list[float], dict[str, bytes], int]:
    """(images/s, latencies in s, label map by stem, errors) of every image sent once at `concurrency`."""
    data = {p.stem: p.read_bytes() for p in paths}
    clients = [httpx.Client(timeout=300) for _ in range(concurrency)]

    def post(job: tuple[int, str]) -> tuple[str, float, int, bytes]:
        i, stem = job
        start = time.perf_counter()
        r = clients[i % concurrency].post(
            f"{url}/v1/parse", files={"image": (f"{stem}.jpg", data[stem], "image/jpeg")}
        )
        return stem, time.perf_counter() - start, r.status_code, r.content

    jobs = list(enumerate(data))
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, jobs[:concurrency]))  # warm-up: connections open, caches warm
        start = time.perf_counter()
        results = list(pool.map(post, jobs))
        seconds = time.perf_counter() - start
    for c in clients:
        c.close()
    labels = {stem: body for stem, _, status, body in results if status == 200}
    errors = sum(status != 200 for _, _, status, _ in results)
    return len(results) / seconds, [lat for _, lat, _, _ in results], labels, errors


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", help="any model predict takes (default: the shipped face parser)")
    p.add_argument("--images", type=int, default=32, help="synthetic faces (default 32)")
    p.add_argument("--size", type=int, default=256, help="their side in pixels (default 256)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--threads", type=int, default=2, help="compute threads of both sides (default 2)")
    p.add_argument("--tta", default="none", help="test-time augmentation of both sides (default none)")
    p.add_argument("--backend", default="torch", help="backend of both sides (default torch; see above)")
    args = p.parse_args()
    model = [args.model] if args.model else []
    flags = ["--threads", str(args.threads), "--tta", args.tta, "--backend", args.backend]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp / "images", args.images, args.size)
        predict_rate = run_predict(model, tmp / "images", tmp / "predict", flags)
        proc, url = start_server(
            model, [*flags, "--queue-size", str(4 * args.concurrency)], tmp / "serve.log"
        )
        try:
            serve_rate, latencies, labels, errors = run_serve(url, paths, args.concurrency)
        finally:
            proc.send_signal(2)
            code = proc.wait(60)
        same = sum(
            labels.get(path.stem) == (tmp / "predict" / f"{path.stem}.png").read_bytes() for path in paths
        )
    p50, p95 = (1e3 * np.percentile(latencies, q) for q in (50, 95))
    ratio = serve_rate / predict_rate
    name = args.model or "the shipped face parser"
    print(f"segformer serve vs predict: {name}, {args.images} faces of {args.size}x{args.size} (JPEG), "
          f"{' '.join(flags)}, concurrency {args.concurrency}")  # fmt: skip
    print(f"predict  {predict_rate:8.2f} images/s")
    print(f"serve    {serve_rate:8.2f} images/s   latency p50 {p50:.0f} ms, p95 {p95:.0f} ms   "
          f"errors {errors}, exit code {code} after Ctrl-C")  # fmt: skip
    print(f"label maps identical to predict's: {same}/{len(paths)}")
    ok = ratio >= TARGET and errors == 0 and same == len(paths) and code == 0
    print(f"TARGET serve / predict >= {TARGET}: {ratio:.2f} -> {'met' if ok else 'NOT MET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
