"""Reading and writing images and label maps.

Images load as (H, W, 3) uint8 RGB whatever is on disk, as a viewer would show them:
- the EXIF orientation is applied (phone photos are stored sideways with an orientation tag);
- grey (L, 1, I;16, I, F) is repeated over three channels; 16-bit values are scaled to 8 bits with
  rounding (v * 255 / 65535), mode I is taken as 16-bit data (what PNG/TIFF decoders produce),
  mode F as floats in [0, 1];
- transparency (RGBA, LA, P or L with a transparent colour) is composited over white;
- CMYK, YCbCr, palette images are converted by Pillow.

Label maps are single-channel PNGs whose pixel values are class ids (mode P or L, also 16-bit
grey when every value fits in a byte). An RGB mask is accepted when it is grey (R = G = B, as written by
tools that save every PNG as three channels) or, given a label set, when every colour is in its palette;
any other colour mask is refused, since guessing ids from colours silently corrupts labels.
Masks written here are mode-P PNGs: pixel value = class id, palette = the label set's colours.
"""

from __future__ import annotations

import io
import shutil
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from ..errors import SegformerError
from ..fileio import atomic_file, atomic_path
from .labels import LabelSet, get_label_set

_ORIENTATION = 0x0112  # the EXIF orientation tag
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# The PNGs written here carry this text chunk, so that a later run knows they are its own to replace.
PNG_MARK = ("Software", "segformer")


def _png_info() -> PngInfo:
    info = PngInfo()
    info.add_text(*PNG_MARK)
    return info


def is_segformer_png(path: str | Path) -> bool:
    """Whether `path` is a PNG written by `save_image` / `save_mask` (reads the header only)."""
    try:
        with Image.open(path) as img:
            return img.format == "PNG" and img.info.get(PNG_MARK[0]) == PNG_MARK[1]
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return False


def _open(path: str | Path, what: str) -> Image.Image:
    """Open and fully decode `path`, turning every decoder failure into one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SegformerError(f"{path}: {what} not found")
    try:
        with warnings.catch_warnings():
            # Large photos (over ~89 MP) are loaded; only Pillow's hard limit (twice that) refuses.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()  # decode now: truncated files fail here, not later in a worker
            if img.getexif().get(_ORIENTATION, 1) != 1:
                img = ImageOps.exif_transpose(img)
            return img
    except Image.DecompressionBombError as err:
        raise SegformerError(f"{path}: {what} too large to load safely ({err})") from None
    except UnidentifiedImageError:
        raise SegformerError(f"{path}: not a readable {what} (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise SegformerError(f"{path}: cannot read {what} ({err})") from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grey: 0..65535 -> 0..255 with rounding (65535 / 255 = 257 exactly).
        grey = np.asarray(img).astype(np.int64).clip(0, 65535)
        grey = ((grey * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        grey = (np.asarray(img, dtype=np.float32).clip(0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_image(path: str | Path) -> np.ndarray:
    """An image as (H, W, 3) uint8 RGB with its EXIF orientation applied (see the module docstring)."""
    img = _open(path, "image")
    try:
        out = _to_rgb(img)
    except (OSError, ValueError) as err:
        raise SegformerError(f"{path}: cannot convert image mode {img.mode} to RGB ({err})") from None
    if out.shape[0] == 0 or out.shape[1] == 0:
        raise SegformerError(f"{path}: empty image ({out.shape[1]}x{out.shape[0]})")
    return np.ascontiguousarray(out)


def to_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """An in-memory image as (H, W, 3) uint8 RGB, converted exactly as `load_image` converts files.

    PIL images get their EXIF orientation applied. numpy arrays are taken as RGB (not OpenCV's BGR):
    (H, W) or (H, W, 1) grey, (H, W, 2) grey + alpha, (H, W, 3) RGB, (H, W, 4) RGBA; uint8, uint16
    (scaled to 8 bits) or float in [0, 1].
    """
    if isinstance(image, Image.Image):
        if image.getexif().get(_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        return np.ascontiguousarray(_to_rgb(image))
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)) or 0 in a.shape[:2]:
        raise SegformerError(f"image array of shape {a.shape}: expected (H, W), (H, W, 1|2|3|4)")
    if a.dtype == np.uint16:
        a = ((a.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)  # as 16-bit files
    elif a.dtype.kind == "f":
        a = (np.nan_to_num(a, nan=0.0).clip(0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise SegformerError(f"image array of dtype {a.dtype}: expected uint8, uint16 or float in [0, 1]")
    if a.ndim == 3 and a.shape[2] == 3:
        return np.ascontiguousarray(a)
    mode = {2: "L", 3: {2: "LA", 4: "RGBA"}.get(a.shape[-1], "")}[a.ndim]
    return np.ascontiguousarray(_to_rgb(Image.fromarray(np.ascontiguousarray(a), mode)))


def load_mask(path: str | Path, label_set: LabelSet | str | None = None) -> np.ndarray:
    """A label map as (H, W) uint8 class ids (see the module docstring for accepted formats)."""
    img = _open(path, "mask")
    mode = img.mode
    if mode in ("P", "L"):
        return np.array(img, dtype=np.uint8)
    if mode == "1":
        return np.array(img, dtype=np.uint8)
    if mode == "LA":
        return np.array(img.getchannel("L"), dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise SegformerError(
                f"{path}: 16-bit mask holds values up to {int(values.max())}; class ids must fit in 0-255"
            )
        return values.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
        if np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 0], rgb[:, :, 2]):
            return np.ascontiguousarray(rgb[:, :, 0])
        if label_set is not None:
            return _rgb_to_ids(rgb, get_label_set(label_set), path)
        raise SegformerError(
            f"{path}: mask is an RGB colour image; expected a single-channel PNG of class ids (mode P or L)"
        )
    raise SegformerError(f"{path}: unsupported mask mode {mode}; expected a single-channel PNG of class ids")


def _rgb_to_ids(rgb: np.ndarray, label_set: LabelSet, path: str | Path) -> np.ndarray:
    """Map a colour mask to ids through the label set's palette; unknown colours are an error."""
    key = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    colours = np.asarray(label_set.palette, dtype=np.int32)
    palette_keys = (colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2]
    if len(np.unique(palette_keys)) != len(palette_keys):
        raise SegformerError(f"{path}: colour mask, and the {label_set.name} palette has repeated colours")
    order = np.argsort(palette_keys)
    pos = np.searchsorted(palette_keys[order], key).clip(0, len(order) - 1)
    found = palette_keys[order][pos] == key
    if not found.all():
        y, x = np.argwhere(~found)[0]
        raise SegformerError(
            f"{path}: colour mask has colour {tuple(int(v) for v in rgb[y, x])} at ({x}, {y}) "
            f"that is not in the {label_set.name} palette"
        )
    return order[pos].astype(np.uint8)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as `load_image` would return it (EXIF orientation applied), read from the header."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(_ORIENTATION, 1)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise SegformerError(f"{path}: cannot read image header ({err})") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def encode_image(image: np.ndarray, fmt: str = "PNG", quality: int = 95) -> bytes:
    """The bytes `save_image` writes for an (H, W, 3) uint8 RGB image in format `fmt` (PNG, JPEG, BMP,
    WEBP), for writers that are not files (`segformer.serve` answers them over HTTP)."""
    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    options = {"JPEG": {"quality": quality}, "WEBP": {"quality": quality}, "PNG": {"pnginfo": _png_info()}}
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options.get(fmt, {}))
    return buffer.getvalue()


def save_image(path: str | Path, image: np.ndarray, quality: int = 95) -> None:
    """Write an (H, W, 3) uint8 RGB image atomically; the format follows the extension (JPEG or PNG)."""
    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}.get(
        path.suffix.lower()
    )
    if fmt is None:
        raise SegformerError(f"{path}: unsupported image extension (use .jpg or .png)")
    data = encode_image(image, fmt, quality)
    # Python's write reports a short write (a full disk); Pillow given a path would ignore one.
    with atomic_file(path) as f:
        f.write(data)


def encode_mask(mask: np.ndarray, label_set: LabelSet | str, name: str = "mask") -> bytes:
    """The bytes `save_mask` writes: (H, W) class ids as a mode-P PNG with the label set's palette.
    Errors start with `name`."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise SegformerError(f"{name}: a mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise SegformerError(f"{name}: mask values must lie in 0-255")
        mask = mask.astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(mask), "P")
    img.putpalette(get_label_set(label_set).palette_bytes())
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", pnginfo=_png_info())
    return buffer.getvalue()


def save_mask(path: str | Path, mask: np.ndarray, label_set: LabelSet | str) -> None:
    """Write (H, W) class ids as a mode-P PNG (pixel value = class id) with the label set's palette."""
    data = encode_mask(mask, label_set, name=str(path))
    with atomic_file(path) as f:  # a file object: see save_image
        f.write(data)


def copy_file(src: str | Path, dst: str | Path) -> None:
    """Byte copy of `src` to `dst`, atomically."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def colorize(mask: np.ndarray, label_set: LabelSet | str) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 palette colours (ignore = white, unknown ids = grey)."""
    return get_label_set(label_set).palette_array()[np.asarray(mask, dtype=np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, label_set: LabelSet | str, alpha: float = 0.5) -> np.ndarray:
    """Blend the colour mask over the image; background (a class named "background" at id 0) and
    ignored pixels keep the image so the face or scene stays visible."""
    label_set = get_label_set(label_set)
    if image.shape[:2] != mask.shape:
        raise SegformerError(f"overlay: image {image.shape[:2]} and mask {mask.shape} sizes differ")
    colour = colorize(mask, label_set).astype(np.float32)
    out = image.astype(np.float32) * (1.0 - alpha) + colour * alpha
    keep = mask == label_set.ignore_index
    if label_set.class_names[0] == "background":
        keep |= mask == 0
    out[keep] = image[keep]
    return (out + 0.5).astype(np.uint8)
