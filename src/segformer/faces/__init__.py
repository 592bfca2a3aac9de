"""Faces in photos and videos: find each face, parse it at the training framing, paste the labels back.

>>> predictor = segformer.Predictor("runs/face/best")
>>> result = predictor.parse_faces("group.jpg", instances=True)
>>> result.ids, result.instances, result.faces_json()
"""

from __future__ import annotations

from ..data.labels import LabelSet
from .align import FRAMING, Framing, crop_transform, invert, warp_to_crop
from .detect import Face, detect_faces
from .pipeline import FaceParse, NoFaceWarning, draw_faces, parse_faces, paste
from .video import FaceVideo, VideoWriter, flicker, parse_video, video_fps, write_video

FACE_CLASSES = ("skin", "nose")


def is_face_label_set(label_set: LabelSet) -> bool:
    """True for label sets of face parts (CelebAMask-HQ and any set naming skin and nose)."""
    names = {n.lower() for n in label_set.class_names}
    return all(c in names for c in FACE_CLASSES)


__all__ = [
    "FRAMING",
    "Face",
    "FaceParse",
    "FaceVideo",
    "Framing",
    "NoFaceWarning",
    "VideoWriter",
    "crop_transform",
    "detect_faces",
    "draw_faces",
    "flicker",
    "invert",
    "is_face_label_set",
    "parse_faces",
    "parse_video",
    "paste",
    "video_fps",
    "warp_to_crop",
    "write_video",
]
