"""Label sets as data: class names, ids, palettes, left/right flip pairs, and remaps between orders.

- CelebAMask-HQ / CE7454 (19 classes): the CE7454 id order, which is the order in which the
  official CelebAMask-HQ preprocessing (`face_parsing/Data_preprocessing/g_mask.py` of
  switchablenorms/CelebAMask-HQ) merges the part masks, plus background at 0. "l_" is the subject's
  left, which lies on the image's right: measured on the shared CE7454 data, the l_eye/l_brow/l_ear
  centroid lies right of its r_ partner in 831 of the 892 masks holding a pair (the other 61, 7%,
  are the known mirrored annotations).
- ADE20K SceneParsing (150 classes, "reduced" labels: file value 0 = other -> ignore, k -> k - 1).
- Cityscapes (the 19 evaluation train ids of cityscapesScripts' `labels.py`; every other label id is
  ignored).

Ids are contracts: checkpoints, masks on disk and metrics all speak them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ..config.validate import provide
from ..errors import SegformerError

IGNORE_INDEX = 255
_T = TypeVar("_T")


@dataclass(frozen=True)
class LabelSet:
    """A set of classes: ``class_names[i]`` and ``palette[i]`` (RGB) describe class id ``i``.

    ``flip_pairs`` lists the classes that swap under a horizontal flip (left/right parts); the first
    class of each pair is the one expected on the image's right (for faces: the subject's left), which
    is what the mirrored-mask check tests.
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.palette):
            raise SegformerError(
                f"label set {self.name}: {len(self.class_names)} names but {len(self.palette)} colours"
            )
        if not 0 < len(self.class_names) <= self.ignore_index:
            raise SegformerError(f"label set {self.name}: class ids must lie below the ignore index")
        seen: set[int] = set()
        for a, b in self.flip_pairs:
            if a == b or {a, b} & seen or not (0 <= a < self.num_classes and 0 <= b < self.num_classes):
                raise SegformerError(f"label set {self.name}: bad flip pair ({a}, {b})")
            seen |= {a, b}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def index(self, class_name: str) -> int:
        """The id of a class by name."""
        try:
            return self.class_names.index(class_name)
        except ValueError:
            raise SegformerError(f"label set {self.name}: no class named {class_name!r}") from None

    def flip_lut(self) -> np.ndarray:
        """(256,) uint8: each id -> the id it becomes under a horizontal flip (others map to themselves)."""
        lut = np.arange(256, dtype=np.uint8)
        for a, b in self.flip_pairs:
            lut[a], lut[b] = b, a
        return lut

    def palette_array(self) -> np.ndarray:
        """(256, 3) uint8 colour of every byte value: the palette for class ids, white for the ignore
        index, mid grey for values outside the class set (so they stand out in a preview)."""
        colours = np.full((256, 3), 128, dtype=np.uint8)
        colours[: self.num_classes] = np.asarray(self.palette, dtype=np.uint8)
        colours[self.ignore_index] = 255
        return colours

    def palette_bytes(self) -> bytes:
        """768 bytes for `PIL.Image.putpalette` (pixel value = class id)."""
        return self.palette_array().tobytes()

    def valid_lut(self) -> np.ndarray:
        """(256,) bool: True for class ids and the ignore index (the values a mask may hold)."""
        ok = np.zeros(256, dtype=bool)
        ok[: self.num_classes] = True
        ok[self.ignore_index] = True
        return ok


# -- CelebAMask-HQ / CE7454 ------------------------------------------------------------------------

CELEBAMASK_NAMES = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip

# The colours of the CE7454 / CelebAMask-HQ colour masks.
CELEBAMASK_PALETTE = (
    (0, 0, 0), (204, 0, 0), (76, 153, 0), (204, 204, 0), (51, 51, 255), (204, 0, 204), (0, 255, 255),
    (255, 204, 204), (102, 51, 0), (255, 0, 0), (102, 204, 0), (255, 255, 0), (0, 0, 153), (0, 0, 204),
    (255, 51, 153), (0, 204, 204), (0, 51, 0), (255, 153, 51), (0, 204, 0),
)  # fmt: skip

CELEBAMASK = LabelSet(
    name="celebamask",
    class_names=CELEBAMASK_NAMES,
    palette=CELEBAMASK_PALETTE,
    flip_pairs=((4, 5), (6, 7), (8, 9)),
)

# -- ADE20K (SceneParsing benchmark, 150 classes) ---------------------------------------------------

# Short names of objectInfo150 in the benchmark's class order (the names mmsegmentation uses).
ADE20K_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair",
    "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box",
    "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair",
    "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip


def bit_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour map: the bits of the id spread over the high bits of R, G and B, which
    gives n distinct colours with neighbouring ids far apart."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


ADE20K = LabelSet(
    name="ade20k",
    class_names=ADE20K_NAMES,
    # Ids start at 1 so that class 0 (wall) is not black like the ignore-free background of a preview.
    palette=bit_palette(len(ADE20K_NAMES) + 1)[1:],
)

# -- Cityscapes (19 train ids) ----------------------------------------------------------------------

CITYSCAPES_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)  # fmt: skip

# Colours of cityscapesScripts' labels.py for the same classes.
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

# labelIds (gtFine_labelIds.png values) of the 19 evaluated classes, in train-id order.
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

CITYSCAPES = LabelSet(name="cityscapes", class_names=CITYSCAPES_NAMES, palette=CITYSCAPES_PALETTE)


def cityscapes_lut() -> np.ndarray:
    """(256,) uint8: gtFine labelId -> train id (255 for every class that is not evaluated)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for train_id, label_id in enumerate(CITYSCAPES_LABEL_IDS):
        lut[label_id] = train_id
    return lut


def ade20k_lut() -> np.ndarray:
    """(256,) uint8: ADE20K annotation value -> reduced label (0 "other" -> ignore, k -> k - 1)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[1 : len(ADE20K_NAMES) + 1] = np.arange(len(ADE20K_NAMES), dtype=np.uint8)
    return lut


# -- registry ---------------------------------------------------------------------------------------

_LABEL_SETS = {ls.name: ls for ls in (CELEBAMASK, ADE20K, CITYSCAPES)}
_ALIASES = {"ce7454": "celebamask", "celebamask-hq": "celebamask", "celebamaskhq": "celebamask"}


def list_label_sets() -> list[str]:
    return list(_LABEL_SETS)


def get_label_set(name: str | LabelSet) -> LabelSet:
    """A label set by name (``celebamask`` = ``ce7454`` = ``celebamask-hq``, ``ade20k``, ``cityscapes``)."""
    if isinstance(name, LabelSet):
        return name
    return _by_name(name, _LABEL_SETS, _ALIASES, "label set")


def _by_name(name: str, table: Mapping[str, _T], aliases: Mapping[str, str], what: str) -> _T:
    """``table[name]`` with `aliases` and any letter case; an unknown name is an error listing the known."""
    key = aliases.get(name.lower(), name.lower())
    if key not in table:
        raise SegformerError(f"unknown {what} {name!r}; known: {', '.join([*table, *aliases])}")
    return table[key]


provide("data.label_set", get_label_set)  # checks a recipe's data.label_set


# -- face-parsing label orders ----------------------------------------------------------------------
# Every order is written with CelebAMask-HQ part names, so "l_eye" always means the subject's left eye.

# zllrunning/face-parsing.PyTorch (BiSeNet): `atts` in face_dataset.py / prepropess_data.py, the order of
# its widely used 79999_iter.pth weights.
BISENET_NAMES = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)  # fmt: skip

# FaRL (FacePerceiver/FaRL, blueprint CelebAMaskHQ dataset, label_type "all") and SegFace
# (Kartik-3004/SegFace, CelebAMaskHQ LABELS). FaRL names these ids bg, neck, face, cloth, rr, lr, rb, lb,
# re, le, ...: its "rr" is built from CelebAMask-HQ's `_l_ear` files, i.e. FaRL names the sides as the
# viewer sees them, while SegFace keeps CelebAMask-HQ's names for the same ids.
FARL_NAMES = (
    "background", "neck", "skin", "cloth", "l_ear", "r_ear", "l_brow", "r_brow", "l_eye", "r_eye",
    "nose", "mouth", "l_lip", "u_lip", "hair", "eye_g", "hat", "ear_r", "neck_l",
)  # fmt: skip

FACE_ORDERS: dict[str, tuple[str, ...]] = {
    "celebamask": CELEBAMASK_NAMES,  # the CE7454 order, this package's
    "bisenet": BISENET_NAMES,
    "farl": FARL_NAMES,
}
_ORDER_ALIASES = {
    "ce7454": "celebamask",
    "celebamask-hq": "celebamask",
    "face-parsing.pytorch": "bisenet",
    "face-parsing": "bisenet",
    "segface": "farl",
}


def list_face_orders() -> list[str]:
    return list(FACE_ORDERS)


def face_order(name: str | Sequence[str]) -> tuple[str, ...]:
    """A face-parsing label order by name, or an explicit sequence of CelebAMask-HQ part names."""
    if not isinstance(name, str):
        order = tuple(name)
        if sorted(order) != sorted(CELEBAMASK_NAMES):
            raise SegformerError(f"a face label order must permute the 19 CelebAMask-HQ names, got {order}")
        return order
    return _by_name(name, FACE_ORDERS, _ORDER_ALIASES, "face label order")


def remap_lut(src_order: str | Sequence[str], dst_order: str | Sequence[str]) -> np.ndarray:
    """(256,) uint8 lookup table taking ids of `src_order` to the ids of the same parts in `dst_order`
    (values outside the 19 classes, e.g. the ignore index, map to themselves). Use as ``lut[mask]``;
    for logits/probabilities, ``probs[:, remap_lut(dst, src)[:19]]`` reorders the channels."""
    src, dst = face_order(src_order), face_order(dst_order)
    lut = np.arange(256, dtype=np.uint8)
    for i, part in enumerate(src):
        lut[i] = dst.index(part)
    return lut
