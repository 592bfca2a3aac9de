"""Label sets: ids, palettes and flip pairs against the CelebAMask-HQ release, lookups, face-order remaps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segformer import SegformerError
from segformer.data.labels import (
    ADE20K,
    CELEBAMASK,
    CITYSCAPES,
    ade20k_lut,
    cityscapes_lut,
    get_label_set,
    list_face_orders,
    list_label_sets,
    remap_lut,
)

# The CelebAMask-HQ classes and palette, written out again by hand.
EXPECTED_NAMES = [
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth",
    "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
]  # fmt: skip
EXPECTED_PALETTE = [
    (0, 0, 0), (204, 0, 0), (76, 153, 0), (204, 204, 0), (51, 51, 255), (204, 0, 204), (0, 255, 255),
    (255, 204, 204), (102, 51, 0), (255, 0, 0), (102, 204, 0), (255, 255, 0), (0, 0, 153), (0, 0, 204),
    (255, 51, 153), (0, 204, 204), (0, 51, 0), (255, 153, 51), (0, 204, 0),
]  # fmt: skip


def test_celebamask_matches_the_spec():
    assert list(CELEBAMASK.class_names) == EXPECTED_NAMES
    assert list(CELEBAMASK.palette) == EXPECTED_PALETTE
    assert CELEBAMASK.num_classes == 19 and CELEBAMASK.ignore_index == 255
    assert set(CELEBAMASK.flip_pairs) == {(4, 5), (6, 7), (8, 9)}


def test_aliases_and_unknown_names():
    for name in ("celebamask", "CE7454", "celebamask-hq", CELEBAMASK):
        assert get_label_set(name) is CELEBAMASK
    assert list_label_sets() == ["celebamask", "ade20k", "cityscapes"]
    with pytest.raises(SegformerError, match=r"unknown label set 'faces'.*celebamask.*ade20k.*cityscapes"):
        get_label_set("faces")


def test_flip_lut_swaps_pairs_and_is_an_involution():
    lut = CELEBAMASK.flip_lut()
    assert lut.shape == (256,) and lut.dtype == np.uint8
    assert [int(lut[i]) for i in range(19)] == [0, 1, 2, 3, 5, 4, 7, 6, 9, 8, *range(10, 19)]
    assert lut[255] == 255 and lut[200] == 200
    np.testing.assert_array_equal(lut[lut], np.arange(256))
    np.testing.assert_array_equal(ADE20K.flip_lut(), np.arange(256))  # no pairs: identity


def test_palette_bytes_drive_pil_palettes():
    img = Image.fromarray(np.arange(19, dtype=np.uint8)[None], "P")
    img.putpalette(CELEBAMASK.palette_bytes())
    assert len(CELEBAMASK.palette_bytes()) == 768
    assert [tuple(c) for c in np.asarray(img.convert("RGB"))[0]] == EXPECTED_PALETTE
    colours = CELEBAMASK.palette_array()
    assert tuple(colours[255]) == (255, 255, 255)  # ignore shows white
    assert tuple(colours[19]) == (128, 128, 128)  # unknown ids show grey


def test_bad_label_sets_are_refused():
    from segformer.data.labels import LabelSet

    with pytest.raises(SegformerError, match="2 names but 1 colours"):
        LabelSet("x", ("a", "b"), ((0, 0, 0),))
    with pytest.raises(SegformerError, match="bad flip pair"):
        LabelSet("x", ("a", "b"), ((0, 0, 0), (1, 1, 1)), flip_pairs=((0, 0),))


def test_ade20k_has_150_classes_and_reduced_labels():
    assert ADE20K.num_classes == 150
    assert ADE20K.class_names[0] == "wall" and ADE20K.class_names[2] == "sky"
    assert ADE20K.class_names[12] == "person" and ADE20K.class_names[20] == "car"
    assert ADE20K.class_names[149] == "flag"
    assert len(set(ADE20K.class_names)) == 150 and len(set(ADE20K.palette)) == 150
    lut = ade20k_lut()
    assert lut[0] == 255 and lut[1] == 0 and lut[150] == 149 and lut[151] == 255 and lut[255] == 255


def test_cityscapes_train_ids():
    assert CITYSCAPES.num_classes == 19
    lut = cityscapes_lut()
    # cityscapesScripts labelIds: 7 road, 8 sidewalk, 26 car, 33 bicycle; 0 unlabeled, 9 parking, 29 caravan
    assert (lut[7], lut[8], lut[26], lut[33]) == (0, 1, 13, 18)
    assert CITYSCAPES.class_names[13] == "car" and CITYSCAPES.palette[0] == (128, 64, 128)
    assert lut[0] == lut[9] == lut[29] == lut[255] == 255
    assert sorted(int(v) for v in lut if v != 255) == list(range(19))


def test_remap_between_face_orders():
    assert set(list_face_orders()) == {"celebamask", "bisenet", "farl"}
    to_ours = remap_lut("face-parsing.pytorch", "celebamask")
    # face-parsing.PyTorch ids: 1 skin, 2 l_brow, 6 eye_g, 9 ear_r, 10 nose, 17 hair, 18 hat
    assert [int(to_ours[i]) for i in (0, 1, 2, 6, 9, 10, 17, 18)] == [0, 1, 6, 3, 15, 2, 13, 14]
    # FaRL/SegFace ids: 1 neck, 2 skin, 3 cloth, 4 l_ear (FaRL's "rr"), 11 mouth, 12 l_lip, 13 u_lip
    farl = remap_lut("segface", "ce7454")
    assert [int(farl[i]) for i in (1, 2, 3, 4, 11, 12, 13)] == [17, 1, 18, 8, 10, 12, 11]
    assert to_ours[255] == 255
    for a in list_face_orders():
        for b in list_face_orders():
            np.testing.assert_array_equal(remap_lut(b, a)[remap_lut(a, b)], np.arange(256))
    # a remapped mask keeps the meaning of every pixel
    mask = np.array([[2, 4, 10], [13, 255, 17]], dtype=np.uint8)  # bisenet ids
    names = [CELEBAMASK.class_names[v] if v != 255 else "ignore" for v in to_ours[mask].ravel()]
    assert names == ["l_brow", "l_eye", "nose", "l_lip", "ignore", "hair"]


def test_unknown_or_invalid_face_orders():
    with pytest.raises(SegformerError, match="unknown face label order 'lapa'"):
        remap_lut("lapa", "celebamask")
    with pytest.raises(SegformerError, match="permute the 19 CelebAMask-HQ names"):
        remap_lut(["background", "skin"], "celebamask")
