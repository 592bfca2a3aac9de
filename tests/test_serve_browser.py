"""The page of `segformer serve` in a real browser: Debian's chromium, headless, driven by Playwright (the
PyPI package pointed at /usr/bin/chromium; no browser is ever downloaded). Upload a face made here, wait
for the overlay, toggle a class, read the class under the pointer, download the label map and compare it
with `segformer predict`'s; take a camera snapshot from chromium's fake camera; see an error in words.
The screenshot is kept in build/test-artifacts/ (the README's picture comes from there)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segformer.cli import main
from segformer.data.synthetic import generate_face
from serve_process import start_server

from conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "build" / "test-artifacts"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # chromium's own test camera and no permission prompt: the snapshot button can be used
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
]  # fmt: skip

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM} (apt-get install chromium)"),
]


def _opaque(page) -> int:
    """Pixels the overlay canvas paints."""
    return page.evaluate(
        """() => { const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"""
    )


def test_the_page_parses_an_upload_like_predict(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    face = tmp_path / "face.png"
    Image.fromarray(generate_face(np.random.default_rng(7), 256)[0]).save(face)
    settings = ["--tta", "none", "--backend", "torch", "--threads", "1"]  # the shipped face parser, quickly
    assert main(["predict", str(face), "--out", str(tmp_path / "cli"), "--quiet", *settings]) == 0
    expected = (tmp_path / "cli" / "face.png").read_bytes()

    server = start_server(*settings, log=tmp_path / "server.log")
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"),  # a fresh profile
                executable_path=str(CHROMIUM),
                headless=True,
                args=ARGS,
                accept_downloads=True,
                viewport={"width": 1100, "height": 760},
            )
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(server.url + "/")
            page.wait_for_selector("body[data-state=ready]")
            assert page.inner_text("#model-name") == "microsegformer-celebamask"

            page.set_input_files("#file", str(face))
            page.wait_for_selector("body[data-state=done]")
            assert page.is_visible("#stage") and "face" in page.inner_text("#status")
            painted = _opaque(page)
            assert painted > 0

            # A class toggled off leaves the overlay by exactly its pixels.
            skin = page.locator("#legend input[data-id='1']")
            pixels = page.evaluate("() => state.result.classes.find((c) => c.id === 1).pixels")
            skin.uncheck()
            assert _opaque(page) == painted - pixels
            skin.check()
            assert _opaque(page) == painted

            # The class under the pointer.
            box = page.locator("#overlay").bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.45)
            assert page.inner_text("#pointer").split(" (")[0] in (
                "skin",
                "nose",
                "l_eye",
                "r_eye",
                "l_brow",
                "r_brow",
            )

            page.fill("#opacity", "55")
            assert page.evaluate("() => document.getElementById('overlay').style.opacity") == "0.55"
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)

            with page.expect_download() as download:
                page.click("#dl-label")
            download.value.save_as(tmp_path / "downloaded.png")
            assert (tmp_path / "downloaded.png").read_bytes() == expected
            with page.expect_download() as download:
                page.click("#dl-part")
            assert download.value.suggested_filename.startswith("face-")

            # A file dropped on the page is sent too; one that is no image gets an error in words.
            page.evaluate(
                """() => { const files = new DataTransfer();
                files.items.add(new File(["not an image"], "notes.png", {type: "image/png"}));
                document.getElementById("drop").dispatchEvent(
                    new DragEvent("drop", {dataTransfer: files, bubbles: true, cancelable: true})); }"""
            )
            page.wait_for_selector("body[data-state=error]")
            assert "not an image" in page.inner_text("#error")

            # A snapshot of chromium's fake camera goes through the same path.
            page.click("#camera")
            page.wait_for_function("() => document.getElementById('video').videoWidth > 0")
            page.click("#snap")
            page.wait_for_selector("body[data-state=done]")
            assert page.inner_text("#status").startswith("640×480")
            browser.close()
    finally:
        assert server.stop() == 0
        server.close()
    shutil.copyfile(tmp_path / "server.log", ARTIFACTS / "serve-page.log")
