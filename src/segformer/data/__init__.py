"""Data: label sets, image/mask I/O, datasets and their layouts, augmentation, synthetic faces, checks."""

from .check import CheckReport, check_dataset, fix_dataset, is_mirrored
from .datasets import ADE20KDataset, CityscapesDataset, FolderDataset, SegmentationDataset
from .io import colorize, load_image, load_mask, overlay, save_image, save_mask
from .labels import LabelSet, get_label_set, list_face_orders, list_label_sets, remap_lut
from .layouts import LAYOUTS, build_datasets, detect_kind, load_split
from .prepare import prepare_celebamask
from .preview import preview_dataset
from .synthetic import generate_face, write_synthetic_dataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD, PRESETS, SegTransform, build_transform, hflip, normalize

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LAYOUTS",
    "PRESETS",
    "ADE20KDataset",
    "CheckReport",
    "CityscapesDataset",
    "FolderDataset",
    "LabelSet",
    "SegTransform",
    "SegmentationDataset",
    "build_datasets",
    "build_transform",
    "check_dataset",
    "colorize",
    "detect_kind",
    "fix_dataset",
    "generate_face",
    "get_label_set",
    "hflip",
    "is_mirrored",
    "list_face_orders",
    "list_label_sets",
    "load_image",
    "load_mask",
    "load_split",
    "normalize",
    "overlay",
    "prepare_celebamask",
    "preview_dataset",
    "remap_lut",
    "save_image",
    "save_mask",
    "write_synthetic_dataset",
]
