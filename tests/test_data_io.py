"""Image and mask I/O: every image mode loads as the RGB a viewer shows; masks keep their ids; bad files
give one-line errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segformer import SegformerError
from segformer.data.io import colorize, image_size, load_image, load_mask, overlay, save_image, save_mask
from segformer.data.labels import CELEBAMASK


def _rgb(h: int = 6, w: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_and_jpeg(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out, rgb)
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(tmp_path / "a.jpg", quality=95)
    assert np.abs(load_image(tmp_path / "a.jpg").astype(int) - 120).max() <= 2


def test_grey_and_palette_images(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(load_image(tmp_path / "l.png"), np.repeat(grey[..., None], 3, 2))
    p = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    p.putpalette([10, 20, 30, 200, 100, 50])
    p.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), [[[10, 20, 30], [200, 100, 50]]])
    Image.fromarray(grey, "L").convert("CMYK").save(tmp_path / "c.jpg")
    assert load_image(tmp_path / "c.jpg").shape == (6, 8, 3)


def test_sixteen_bit_grey_is_scaled_to_eight_bits(tmp_path):
    values = np.array([[0, 257, 65535, 32896, 128]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_image(tmp_path / "g16.png")
    # v * 255 / 65535 rounded: 257 -> 1, 32896 -> 128, 128 -> 0.498 -> 0
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 255, 128, 0])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    Image.fromarray(np.array([[0.0, 0.5, 1.0, 2.0]], np.float32), "F").save(tmp_path / "f.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "f.tif")[0, :, 1], [0, 128, 255, 255])


def test_alpha_is_composited_over_white(tmp_path):
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (200, 0, 0, 255)  # opaque red
    rgba[0, 1] = (200, 0, 0, 0)  # fully transparent: white
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black over white: grey 127
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png").astype(int)
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    assert np.abs(out[0, 2] - 127).max() <= 1
    la = Image.fromarray(np.array([[[50, 255], [50, 0]]], np.uint8), "LA")
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_image(tmp_path / "la.png")[0, :, 0], [50, 255])


def test_exif_orientation_is_applied(tmp_path):
    # Stored 4 wide x 2 high with a red pixel at the stored top-left; orientation 6 = rotate 90 degrees
    # clockwise for display, so the image is 2 wide x 4 high and the red pixel ends up top-right.
    stored = np.zeros((2, 4, 3), np.uint8)
    stored[0, 0] = (255, 0, 0)
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "r.png", exif=exif.tobytes())
    out = load_image(tmp_path / "r.png")
    assert out.shape == (4, 2, 3)
    assert tuple(out[0, 1]) == (255, 0, 0) and out.sum() == 255
    assert image_size(tmp_path / "r.png") == (2, 4)


@pytest.mark.parametrize("case", ["missing", "text", "truncated", "empty"])
def test_unreadable_images_give_one_line_errors(tmp_path, case):
    path = tmp_path / "bad.jpg"
    if case == "text":
        path.write_text("not an image")
    elif case == "truncated":
        Image.fromarray(_rgb(64, 64)).save(path, quality=90)
        path.write_bytes(path.read_bytes()[:300])
    elif case == "empty":
        path.write_bytes(b"")
    with pytest.raises(SegformerError) as err:
        load_image(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "\n" not in msg


def test_masks_keep_class_ids(tmp_path):
    ids = np.arange(20, dtype=np.uint8).reshape(4, 5)
    ids[0, 0] = 255
    Image.fromarray(ids, "L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "l.png"), ids)
    save_mask(tmp_path / "p.png", ids, CELEBAMASK)
    img = Image.open(tmp_path / "p.png")
    assert img.mode == "P" and img.getpalette()[: 3 * 19] == [c for rgb in CELEBAMASK.palette for c in rgb]
    np.testing.assert_array_equal(load_mask(tmp_path / "p.png"), ids)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_rgb_masks(tmp_path):
    ids = np.array([[0, 1, 13], [4, 5, 18]], dtype=np.uint8)
    Image.fromarray(np.repeat(ids[..., None], 3, 2)).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "grey.png"), ids)  # R = G = B: the ids
    Image.fromarray(colorize(ids, CELEBAMASK)).save(tmp_path / "colour.png")
    with pytest.raises(SegformerError, match=r"colour\.png: mask is an RGB colour image"):
        load_mask(tmp_path / "colour.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "colour.png", "celebamask"), ids)
    odd = colorize(ids, CELEBAMASK)
    odd[1, 2] = (1, 2, 3)
    Image.fromarray(odd).save(tmp_path / "odd.png")
    with pytest.raises(SegformerError, match=r"colour \(1, 2, 3\) at \(2, 1\) that is not in the celebamask"):
        load_mask(tmp_path / "odd.png", "celebamask")


def test_sixteen_bit_masks(tmp_path):
    Image.fromarray(np.array([[0, 3, 18]], np.uint16)).save(tmp_path / "ok.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "ok.png"), [[0, 3, 18]])
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "big.png")
    with pytest.raises(SegformerError, match=r"big\.png: 16-bit mask holds values up to 300"):
        load_mask(tmp_path / "big.png")


def test_save_mask_and_image_validate(tmp_path):
    with pytest.raises(SegformerError, match="must be 2-D"):
        save_mask(tmp_path / "m.png", np.zeros((2, 2, 3), np.uint8), CELEBAMASK)
    with pytest.raises(SegformerError, match="values must lie in 0-255"):
        save_mask(tmp_path / "m.png", np.array([[300]]), CELEBAMASK)
    with pytest.raises(SegformerError, match="unsupported image extension"):
        save_image(tmp_path / "x.gifx", _rgb())
    save_image(tmp_path / "x.png", _rgb())
    np.testing.assert_array_equal(load_image(tmp_path / "x.png"), _rgb())


def test_colorize_and_overlay():
    mask = np.array([[0, 1], [255, 19]], dtype=np.uint8)
    colours = colorize(mask, CELEBAMASK)
    assert colours.shape == (2, 2, 3)
    assert tuple(colours[0, 1]) == (204, 0, 0) and tuple(colours[1, 0]) == (255, 255, 255)
    image = np.full((2, 2, 3), 100, np.uint8)
    out = overlay(image, mask, "celebamask", alpha=0.25)
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])  # background keeps the image
    np.testing.assert_array_equal(out[1, 0], [100, 100, 100])  # so does ignore
    np.testing.assert_array_equal(out[0, 1], [126, 75, 75])  # 0.75 * 100 + 0.25 * (204, 0, 0), rounded
    with pytest.raises(SegformerError, match="sizes differ"):
        overlay(image, mask[:1], "celebamask")


def test_images_past_pillows_pixel_limit_are_refused_by_name(tmp_path, monkeypatch):
    Image.fromarray(_rgb(20, 20)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 250)  # 400 px: past the warning, under twice the limit
    assert load_image(tmp_path / "big.png").shape == (20, 20, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 px > 2 x 100: Pillow refuses to decode
    with pytest.raises(SegformerError, match=r"big\.png: image too large to load safely"):
        load_image(tmp_path / "big.png")
