"""The Predictor: masks at the input's size for every kind of image, a naive reference, batching,
probabilities, flip TTA with left/right swap, sliding windows, label sets and settings from meta."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segformer import Predictor, SegformerError, create_model, load
from segformer.checkpoint import save_model
from segformer.data.io import load_image, to_rgb
from segformer.data.labels import ADE20K, CELEBAMASK, CITYSCAPES, LabelSet, bit_palette
from segformer.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform, normalize
from segformer.inference.ops import (
    Preprocess,
    class_ids,
    predict_views,
    preprocess,
    resize,
    resize_rows,
    view_class_ids,
    view_probs,
)
from segformer.inference.settings import InferenceSettings, resolve_label_set

from conftest import tiny_config


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    m = create_model(tiny_config("micro", num_classes=19)).eval()
    m.meta = {"label_set": "celebamask", "image_size": 48}
    return m


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    # Smooth blobs rather than noise, so that resizing matters and classes vary over the image.
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def reference_ids(model: nn.Module, image: np.ndarray, size: int) -> np.ndarray:
    """The recipe written out: scale to [0, 1], ImageNet-normalise, bilinear to the working size,
    forward, bilinear back to the image, argmax."""
    x = (image.astype(np.float64) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    x = torch.from_numpy(x.transpose(2, 0, 1)[None]).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    with torch.no_grad():
        logits = F.interpolate(model(x), size=image.shape[:2], mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].numpy()


def test_predictor_matches_a_naive_reference(model):
    image = _image(37, 53)
    ids = Predictor(model, faces=False)(image)
    assert ids.shape == (37, 53) and ids.dtype == np.uint8
    ref = reference_ids(model, image, 48)
    assert len(np.unique(ref)) > 1  # a mask worth comparing
    # float64 vs float32 normalisation: only exact near-ties may differ
    assert (ids != ref).mean() < 1e-3


def test_every_image_kind_gives_a_mask_of_the_displayed_size(model, tmp_path):
    predictor = Predictor(model, faces=False)
    rgb = _image(29, 41)
    files = {}
    Image.fromarray(rgb).save(files.setdefault("odd", tmp_path / "odd.png"))
    Image.fromarray(rgb[..., 0], "L").save(files.setdefault("grey", tmp_path / "grey.png"))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(files.setdefault("rgba", tmp_path / "rgba.png"))
    Image.fromarray(np.dstack([rgb[..., 1], rgba[..., 3]]), "LA").save(
        files.setdefault("la", tmp_path / "la.png")
    )
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(files.setdefault("16bit", tmp_path / "16.png"))
    assert Image.open(files["16bit"]).mode.startswith("I")
    for orientation in (6, 8):  # stored sideways: displayed 41 high x 29 wide
        img = Image.fromarray(rgb)
        exif = img.getexif()
        exif[0x0112] = orientation
        img.save(
            files.setdefault(f"exif{orientation}", tmp_path / f"exif{orientation}.png"), exif=exif.tobytes()
        )
    masks = predictor(list(files.values()))
    for (name, path), mask in zip(files.items(), masks, strict=True):
        expected = (41, 29) if name.startswith("exif") else (29, 41)
        assert mask.shape == expected, name
        # a file predicts like the pixels a viewer shows
        np.testing.assert_array_equal(mask, predictor(load_image(path)), err_msg=name)
    # grey and 16-bit grey are the same picture: the same mask
    np.testing.assert_array_equal(masks[1], masks[4])
    # EXIF 6 / 8 = rotate 90 degrees clockwise / counter-clockwise for display: masks of rotated pixels
    np.testing.assert_array_equal(masks[5], predictor(np.rot90(rgb, k=-1)))
    np.testing.assert_array_equal(masks[6], predictor(np.rot90(rgb, k=1)))


def test_arrays_and_pil_images_convert_like_files(tmp_path):
    rgb = _image(9, 11)
    grey16 = (rgb[..., 0].astype(np.uint16) * 250).astype(np.uint16)
    rgba = np.dstack([rgb, np.arange(99, dtype=np.uint8).reshape(9, 11) * 2])
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(to_rgb(grey16), load_image(tmp_path / "g16.png"))
    np.testing.assert_array_equal(to_rgb(rgba), load_image(tmp_path / "rgba.png"))
    np.testing.assert_array_equal(
        to_rgb(Image.open(tmp_path / "rgba.png")), load_image(tmp_path / "rgba.png")
    )
    np.testing.assert_array_equal(to_rgb(rgb[..., :1]), np.repeat(rgb[..., :1], 3, axis=2))
    np.testing.assert_array_equal(to_rgb(rgb.astype(np.float32) / 255), rgb)
    with pytest.raises(SegformerError, match="dtype int64"):
        to_rgb(rgb.astype(np.int64))
    with pytest.raises(SegformerError, match="shape"):
        to_rgb(np.zeros((4, 4, 5), np.uint8))


def test_batches_give_the_masks_of_single_images(model):
    predictor = Predictor(model, batch_size=2, faces=False)
    images = [_image(40, 40, 1), _image(23, 57, 2), _image(40, 40, 3), _image(40, 40, 4), _image(23, 57, 5)]
    batched = predictor(images)
    single = Predictor(model, batch_size=1, faces=False)
    for image, mask in zip(images, batched, strict=True):
        ids, probs = single(image, return_probs=True)
        # batched convolutions may round differently (~1e-7): only near-tied pixels may change
        top2 = np.sort(probs, axis=0)[-2:]
        clear = top2[1] - top2[0] > 1e-5
        np.testing.assert_array_equal(mask[clear], ids[clear])
    stacked = predictor(np.stack([images[0], images[2]]))  # a 4-D array is a batch: the same batch
    np.testing.assert_array_equal(stacked[1], batched[2])
    # preprocessing itself is exactly batch-independent
    x = torch.stack([preprocess(im, 48) for im in (images[0], images[2])])
    torch.testing.assert_close(x, resize(torch.stack([normalize(images[0]), normalize(images[2])]), (48, 48)))


def test_probabilities(model):
    image = _image(31, 45)
    ids, probs = Predictor(model, faces=False)(image, return_probs=True)
    assert probs.shape == (19, 31, 45) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), ids)


class SidedModel(nn.Module):
    """Logits that depend only on position: l_eye (4) on the image's right half, r_eye (5) on its left
    half, l_brow (6) in the top rows, so that a mirror image changes which class a pixel gets."""

    def __init__(self) -> None:
        super().__init__()
        self.config = tiny_config("micro", num_classes=19)
        self.meta = {"label_set": "celebamask", "image_size": 32}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        out = torch.zeros(b, 19, h, w)
        col = torch.arange(w).float()
        out[:, 4] = (col >= w / 2).float().expand(h, w)
        out[:, 5] = (col < w / 2).float().expand(h, w)
        out[:, 6, : h // 4] = 2.0
        return out


def test_flip_tta_swaps_left_and_right_classes():
    model = SidedModel()
    image = _image(32, 32)
    plain = Predictor(model, tta="none", faces=False)(image)
    assert set(np.unique(plain)) == {4, 5, 6}
    # The mirrored view calls the left half l_eye; flipping back and swapping 4 <-> 5 undoes that, so
    # the average is the plain prediction.
    np.testing.assert_array_equal(Predictor(model, tta="flip", faces=False)(image), plain)
    # Without the swap every eye pixel is an exact 4/5 tie, which argmax gives to 4.
    no_pairs = LabelSet("no-pairs", CELEBAMASK.class_names, CELEBAMASK.palette)
    unswapped = Predictor(model, tta="flip", label_set=no_pairs, faces=False)(image)
    assert 5 not in unswapped and (unswapped != plain).mean() > 0.3


def test_scales_tta_and_sliding_windows_keep_the_input_size(model):
    image = _image(70, 90)
    assert Predictor(model, tta="flip+scales", scales=(0.5, 1.0), faces=False)(image).shape == (70, 90)
    slide = Predictor(model, mode="slide", image_size=32, faces=False)
    assert slide(image).shape == (70, 90)
    # a window at least as large as the image runs the model once on the full-resolution image
    small = _image(30, 20)
    x = preprocess(small, None)[None]
    with torch.no_grad():
        expected = model(x).argmax(1)[0].numpy()
    np.testing.assert_array_equal(Predictor(model, mode="slide", image_size=32, faces=False)(small), expected)
    with pytest.raises(SegformerError, match="square"):
        Predictor(model, mode="slide", image_size=(32, 48), faces=False)(small)


def test_evaluation_transform_is_the_predictors_preprocessing():
    image = _image(50, 70)
    x, mask = Preprocess(48)(image, np.zeros((50, 70), np.uint8))
    torch.testing.assert_close(x, preprocess(image, 48), rtol=0, atol=0)
    assert mask.shape == (50, 70) and mask.dtype == torch.int64
    # the OpenCV resize of the training transform samples the same points (< 1 grey level apart)
    cv2_x, _ = build_transform("none", 48, train=False)(image, None)
    assert (cv2_x - x).abs().max() < 1.0 / 255 / min(IMAGENET_STD)


def test_settings_come_from_meta_or_defaults(model, tmp_path):
    save_model(
        model, tmp_path / "m", meta={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "eval_mode": "slide"}
    )
    p = Predictor(tmp_path / "m", faces=False)
    assert p.image_size == (48, 48) and p.mean == (0.5, 0.5, 0.5) and p.mode == "slide" and p.tta == "none"
    assert p.label_set is CELEBAMASK and p.device == torch.device("cpu")
    bare = create_model(tiny_config("micro", num_classes=19))  # e.g. loaded from an HF dir: no meta
    q = Predictor(bare, tta="flip", faces=False)
    assert q.image_size == (512, 512) and q.mean == IMAGENET_MEAN and q.std == IMAGENET_STD
    assert q.mode == "resize" and q.tta == "flip" and q.label_set is CELEBAMASK
    # settings round-trip through plain data (what exports store)
    bare.meta = q.settings()
    r = Predictor(bare, faces=False)
    assert r.settings() == q.settings() and r.label_set == CELEBAMASK


def test_label_sets_are_chosen_by_names_then_count():
    cfg = tiny_config("micro")
    assert resolve_label_set(None, cfg.replace(num_classes=19)) is CELEBAMASK
    assert resolve_label_set(None, cfg.replace(num_classes=150)) is ADE20K
    names = tuple(n.title() for n in CITYSCAPES.class_names)  # HF id2label spelling varies in case
    assert resolve_label_set(None, cfg.replace(num_classes=19, class_names=names)) is CITYSCAPES
    custom = resolve_label_set(None, cfg.replace(num_classes=3, class_names=("bg", "cat", "dog")))
    assert custom.class_names == ("bg", "cat", "dog") and custom.palette == bit_palette(3)
    assert resolve_label_set(None, cfg.replace(num_classes=4)).class_names[3] == "class_3"
    with pytest.raises(SegformerError, match="19 classes but the model predicts 5"):
        resolve_label_set("celebamask", cfg)


def test_bad_inputs(model, tmp_path):
    predictor = Predictor(model, faces=False)
    with pytest.raises(SegformerError, match=r"missing\.png: image not found"):
        predictor(tmp_path / "missing.png")
    with pytest.raises(SegformerError, match="cannot predict on a int"):
        predictor([_image(8, 8), 3])
    with pytest.raises(SegformerError, match="unknown TTA"):
        Predictor(model, tta="mirror", faces=False)
    with pytest.raises(SegformerError, match="unknown backend"):
        Predictor(model, backend="tensorrt", faces=False)


def test_loads_model_directories(model, tmp_path):
    save_model(model, tmp_path / "m")
    image = _image(33, 44)
    np.testing.assert_array_equal(
        Predictor(tmp_path / "m", faces=False)(image), Predictor(load(tmp_path / "m"), faces=False)(image)
    )


def test_class_ids_is_argmax_with_ties_to_the_lowest_id():
    probs = torch.rand(2, 7, 9, 11)
    probs[0, :, 0, 0] = 0.5  # all tied
    probs[0, 3, 1, 1] = probs[0, 5, 1, 1] = 2.0  # a two-way tie at the top
    ids = class_ids(probs)
    assert ids.dtype == torch.int64 and ids[0, 0, 0] == 0 and ids[0, 1, 1] == 3
    torch.testing.assert_close(ids, probs.argmax(1), rtol=0, atol=0)


def test_logits_are_upsampled_in_bands_with_exactly_the_ids_of_the_whole_image(model, monkeypatch):
    torch.manual_seed(1)
    for in_size, out_size in (((32, 32), (77, 101)), ((48, 40), (17, 23)), ((13, 7), (200, 9))):
        x = torch.randn(2, 5, *in_size)
        whole = resize_rows(x, out_size)
        # bilinear with half-pixel centres: F.interpolate's function, to float rounding
        torch.testing.assert_close(
            whole, F.interpolate(x, size=out_size, mode="bilinear", align_corners=False), atol=1e-5, rtol=0
        )
        for start, stop in ((0, 1), (3, 11), (out_size[0] - 4, out_size[0])):
            assert torch.equal(resize_rows(x, out_size, start, stop), whole[:, :, start:stop])
    image = _image(83, 67)
    settings = InferenceSettings(image_size=48, tta="flip+scales", scales=(0.5, 1.0))
    views = predict_views(model, [image, _image(83, 67, 1)], settings)
    flip_perm = torch.arange(19).roll(1)  # any permutation: mirrored views must use it in every band
    expected = class_ids(view_probs(views, (83, 67), flip_perm))
    for band in (1, 19 * 2 * 67, 19 * 2 * 67 * 10 + 5, 10**9):  # one element, one row, ~10 rows, whole
        assert torch.equal(view_class_ids(views, (83, 67), flip_perm, band).long(), expected)
    # the Predictor's ids, computed in small bands, are those of the whole image (and of its probs)
    ids, probs = Predictor(model, tta="flip", faces=False)(image, return_probs=True)
    np.testing.assert_array_equal(ids, class_ids(torch.from_numpy(probs)[None])[0].numpy())
    monkeypatch.setattr("segformer.inference.ops.BAND_ELEMENTS", 19 * 67 * 3)
    np.testing.assert_array_equal(Predictor(model, tta="flip", faces=False)(image), ids)


def test_python_api_errors_are_one_line_segformer_errors(model):
    image = _image(20, 24)
    for device, message in (("gpu", "unknown device 'gpu'"), ("cuda:99", "cuda:99")):
        if device == "cuda:99" or not torch.cuda.is_available():
            with pytest.raises(SegformerError, match=message):
                Predictor(model, device=device, faces=False)
    if not torch.cuda.is_available():
        with pytest.raises(SegformerError, match="sees no CUDA GPU"):
            Predictor(model, device="cuda", faces=False)
    predictor = Predictor(model, faces=False)
    # float images must be in [0, 1]: 0-255 floats are not silently clipped to white
    with pytest.raises(SegformerError, match=r"float image with values in \[15, 246\]: expected \[0, 1\]"):
        predictor(image.astype(np.float32))
    with pytest.raises(SegformerError, match=r"input 1: float image with values in \[nan"):
        predictor([image, np.full((4, 4, 3), np.nan, np.float32)])
    np.testing.assert_array_equal(predictor(image.astype(np.float64) / 255), predictor(image))
    for bad in (np.zeros((8, 8, 5), np.uint8), np.zeros((3, 8, 8, 8), np.uint8)[0, :, :, :5]):
        with pytest.raises(SegformerError, match=r"image array of shape"):
            predictor(bad)
    with pytest.raises(SegformerError, match="dtype bool"):
        predictor(np.zeros((8, 8, 3), bool))
    with pytest.raises(SegformerError, match="batch size must be a positive integer, got 0"):
        Predictor(model, batch_size=0, faces=False)
    with pytest.raises(SegformerError, match=r"image_size: expected an integer >= 1, got -4"):
        Predictor(model, image_size=-4, faces=False)
    with pytest.raises(SegformerError, match="scales: expected positive numbers"):
        Predictor(model, scales=(0.0, 1.0), faces=False)
    with pytest.raises(SegformerError, match="unknown label set 'faces'"):
        Predictor(model, label_set="faces", faces=False)
    with pytest.raises(SegformerError, match=r"image 0: expected \(H, W, 3\) uint8 RGB"):
        predictor.predict_arrays([np.zeros((0, 5, 3), np.uint8)])
