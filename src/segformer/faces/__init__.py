"""Faces in photos and videos: find each face, parse it at the training framing, paste the labels back.

>>> predictor = segformer.Predictor("runs/face/best")
>>> result = predictor.parse_faces("group.jpg", instances=True)
>>> result.ids, result.instances, result.faces_json()

What the faces code needs from the parser is a `FaceModel`: a function from aligned crops to
probabilities, and the inference settings (`Predictor.face_model` builds it); it never sees the
Predictor.
"""

from __future__ import annotations

import warnings

import cv2

from ..data.labels import LabelSet
from .align import FRAMING, Framing, crop_transform, invert, warp_to_crop
from .detect import Face, cascade_available, detect_faces
from .model import FaceModel
from .pipeline import FaceParse, NoFaceWarning, draw_faces, parse_faces
from .video import VIDEO_TTA, FaceVideo, VideoWriter, flicker, parse_video, video_fps, write_video

FACE_CLASSES = ("skin", "nose")


def is_face_label_set(label_set: LabelSet) -> bool:
    """True for label sets of face parts (CelebAMask-HQ and any set naming skin and nose)."""
    names = {n.lower() for n in label_set.class_names}
    return all(c in names for c in FACE_CLASSES)


class FacesUnavailableWarning(UserWarning):
    """This OpenCV cannot find faces: images are parsed whole."""


def default_faces(label_set: LabelSet) -> bool:
    """Whether a predictor for `label_set` localises faces by default: for face label sets, when this
    OpenCV has the Haar cascade; otherwise (OpenCV 5) it warns once and parses images whole, as an
    explicit ``faces=True`` would fail on the first image."""
    if not is_face_label_set(label_set):
        return False
    if cascade_available():
        return True
    warnings.warn(
        f"OpenCV {cv2.__version__} has no Haar cascades: face localisation is off and images are parsed "
        "as aligned face crops (OpenCV 5 lacks the cascade files; to find faces in photos: "
        'pip install "opencv-python-headless<5")',
        FacesUnavailableWarning,
        stacklevel=3,
    )
    return False


__all__ = [
    "FRAMING",
    "VIDEO_TTA",
    "Face",
    "FaceModel",
    "FaceParse",
    "FaceVideo",
    "FacesUnavailableWarning",
    "Framing",
    "NoFaceWarning",
    "VideoWriter",
    "cascade_available",
    "crop_transform",
    "default_faces",
    "detect_faces",
    "draw_faces",
    "flicker",
    "invert",
    "is_face_label_set",
    "parse_faces",
    "parse_video",
    "video_fps",
    "warp_to_crop",
    "write_video",
]
