"""Issue 25's face rules, each on an image made here and a hand-made parser: the narrow protocol
(`FaceModel`: a function from crops to probabilities, plus settings) lets a test parse with a
function whose answer is known. The stand-in parser labels each pixel with the CelebAMask-HQ class
whose palette colour is nearest, so a face painted in palette colours parses exactly as painted."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from segformer.data.labels import get_label_set
from segformer.faces import Face, FaceModel, FaceVideo, NoFaceWarning, parse_faces
from segformer.faces.align import apply, crop_transform, invert
from segformer.faces.landmarks import CANONICAL
from segformer.inference.settings import InferenceSettings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SIZE = 128
PALETTE = np.array(get_label_set("celebamask").palette, np.float32)
# class ids of the painted parts (CelebAMask-HQ): skin, nose, eyes, brows, upper and lower lip
PARTS = {"nose": (2, 0.04), "eye_left": (4, 0.03), "eye_right": (5, 0.03), "brow_left": (6, 0.025),
         "brow_right": (7, 0.025), "mouth": (12, 0.04)}  # fmt: skip


class PaletteParser:
    """`Parse` of the nearest palette colour; counts its calls and the images it saw."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []

    def __call__(self, images, tta):
        self.calls.append((len(images), tta))
        x = np.stack([cv2.resize(im, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for im in images])
        d = ((x.astype(np.float32)[..., None, :] - PALETTE) ** 2).sum(-1)  # (N, S, S, K)
        return torch.from_numpy(-d / 300).permute(0, 3, 1, 2).softmax(1)


def face_model(tta: str = "none") -> tuple[FaceModel, PaletteParser]:
    parser = PaletteParser()
    return FaceModel(parser, InferenceSettings(image_size=SIZE, label_set="celebamask", tta=tta)), parser


def paint_face(image: np.ndarray, face: Face) -> np.ndarray:
    """A face in palette colours whose training crop is `face`'s: skin, and every part at its
    `CANONICAL` place. Returns the class ids painted."""
    ids = np.zeros(image.shape[:2], np.uint8)
    back = invert(crop_transform(face, 100))
    centre = apply(back, np.array([[49.5, 58.0]]))[0]
    axes = (round(face.size * 0.42), round(face.size * 0.58))
    cv2.ellipse(ids, tuple(int(v) for v in centre.round()), axes, -face.angle, 0, 360, 1, -1)
    for name, (cls, radius) in PARTS.items():
        x, y = CANONICAL[name]
        p = apply(back, np.array([[x * 100 - 0.5, y * 100 - 0.5]]))[0]
        r = max(2, round(radius * face.size * 1.6))
        cv2.circle(ids, tuple(int(v) for v in p.round()), r, cls, -1)
    image[ids > 0] = PALETTE[ids[ids > 0]].astype(np.uint8)
    return ids


def filling(side: int, zoom: float = 1.0) -> Face:
    """The face of a `side` x `side` aligned crop (its training crop is the image), made smaller by
    `zoom` about the same centre."""
    size = side / 1.595 / zoom
    return Face((side - 1) / 2, (side - 1) / 2 + 0.078 * size, size)


@pytest.fixture
def detector(monkeypatch):
    """Replaces the cascade: `detector.boxes` are found; `detector.calls` counts the searches."""
    from segformer.faces import pipeline, video

    class Stub:
        def __init__(self) -> None:
            self.boxes: list[Face] = []  # found upright
            self.rotated: list[Face] = []  # found on the rotated copies
            self.searches: list[tuple[tuple[float, ...], list[Face]]] = []

        @property
        def calls(self) -> int:
            return len(self.searches)

        def __call__(self, image, angles=(0.0,), skip=(), **options):
            self.searches.append((tuple(angles), list(skip)))
            return list(self.boxes if 0.0 in angles else self.rotated)

    stub = Stub()
    monkeypatch.setattr(pipeline, "detect_faces", stub)
    monkeypatch.setattr(video, "detect_faces", stub)
    return stub


def test_an_aligned_face_costs_one_parse_and_no_detection(detector):
    image = np.zeros((256, 256, 3), np.uint8)
    painted = paint_face(image, filling(256))
    model, parser = face_model(tta="flip")
    result = parse_faces(model, image, instances=True)
    assert detector.calls == 0 and parser.calls == [(1, "flip")]  # one parse, with the settings' TTA
    assert result.whole_image and len(result.faces) == 1
    assert (result.ids == painted).mean() > 0.97
    face = result.faces[0]  # where the landmarks put the face: the painted one
    assert abs(face.cx - 127.5) < 4 and abs(face.size - 256 / 1.595) < 10 and abs(face.angle) < 3


def test_a_sure_box_inside_the_face_never_replaces_the_whole_parse(detector):
    """Issue 25: the cascade missed the face filling the frame, found a box on its mouth and chin
    with a high score, and that box's parse replaced the whole image's (72% of the pixels wrong). A
    face a little small for the frame makes the detector run; the box inside it is dropped."""
    image = np.zeros((256, 256, 3), np.uint8)
    painted = paint_face(image, filling(256, zoom=1.35))  # room around it: the detector runs
    detector.boxes = [Face(128, 170, 50, 0.0, 35.0)]  # on the mouth and chin, "sure"
    model, _ = face_model()
    result = parse_faces(model, image, instances=True)
    assert detector.calls == 2  # upright, then the rotated copies
    assert result.whole_image and len(result.faces) == 1 and abs(result.faces[0].size - 118) < 10
    assert (result.ids == painted).mean() > 0.97
    assert set(np.unique(result.instances)) == {0, 1}


def test_no_score_skips_the_check(detector):
    """A box of any score whose parse is not a face at that place and size is not a face."""
    image = np.zeros((240, 400, 3), np.uint8)
    real = Face(110, 120, 90, 0.0, 3.0)
    painted = paint_face(image, real)
    # skin with the parts upside down: every part there, none where a face has it
    upside_down = np.zeros_like(image)
    paint_face(upside_down, Face(300, 120, 90, 180.0))
    image[:, 220:] = upside_down[:, 220:]
    model, _ = face_model()
    for score in (1.0, 35.0, 500.0):
        detector.boxes = [real, Face(300, 120, 90, 0.0, score)]
        result = parse_faces(model, image)
        assert len(result.faces) == 1 and result.faces[0].cx == pytest.approx(110, abs=3)
        assert not result.ids[:, 220:].any()
        assert (result.ids[:, :220] == painted[:, :220]).mean() > 0.97


def test_a_square_image_the_detector_misses_is_parsed_whole(detector):
    """No detection, and the whole parse fits the framing: the face is parsed whole (it used to come
    out all background when the face was a little small for the frame)."""
    image = np.zeros((200, 200, 3), np.uint8)
    painted = paint_face(image, filling(200, zoom=1.4))
    detector.boxes = []
    model, _ = face_model()
    result = parse_faces(model, image)
    assert result.whole_image and len(result.faces) == 1
    assert (result.ids == painted).mean() > 0.97


def test_noise_is_no_face(detector):
    image = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    detector.boxes = [Face(64, 64, 50, 0.0, 30.0)]
    model, _ = face_model()
    with pytest.warns(NoFaceWarning):
        result = parse_faces(model, image, instances=True)
    assert result.faces == [] and not result.ids.any() and not result.instances.any()
    assert not result.whole_image and result.faces_json() == []


def test_the_face_in_front_wins(detector):
    """A large blurred face behind a small sharp one: where both claim a pixel, the labels are the
    face in front's, never the blurred face's pasted over it."""
    image = np.zeros((400, 600, 3), np.uint8)
    big, small = Face(300, 200, 200, 0.0, 9.0), Face(200, 255, 80, 0.0, 3.0)  # over its cheek
    paint_face(image, big)
    image[:] = cv2.GaussianBlur(image, (0, 0), 2)
    front = np.zeros_like(image)
    painted = paint_face(front, small)
    image[painted > 0] = front[painted > 0]
    detector.boxes = [big, small]
    model, _ = face_model()
    result = parse_faces(model, image, instances=True)
    assert len(result.faces) == 2
    inner = cv2.erode((painted > 0).astype(np.uint8), np.ones((5, 5))) > 0
    small_index = 1 + min(range(2), key=lambda i: result.faces[i].size)
    assert (result.instances[inner] == small_index).mean() > 0.97
    assert (result.ids[inner] == painted[inner]).mean() > 0.95


def test_one_set_of_faces_in_every_output(detector):
    """The label map, the instance map, the faces' JSON and the overlay's boxes list the same faces:
    a box that contributes no pixels (kept unchecked, on nothing) is in none of them."""
    image = np.zeros((300, 400, 3), np.uint8)
    painted = paint_face(image, Face(200, 150, 100, 0.0, 5.0))
    detector.boxes = [Face(200, 150, 100, 0.0, 5.0), Face(350, 60, 40, 0.0, 9.0)]
    model, _ = face_model()
    result = parse_faces(model, image, instances=True, verify=False)
    assert len(result.faces) == 1 and result.faces[0].cx == 200 and len(result.faces_json()) == 1
    assert set(np.unique(result.instances)) == {0, 1} and len(result.crops) == 1
    assert ((result.instances > 0) == (result.ids > 0)).all()
    assert (result.ids == painted).mean() > 0.97


def test_whole_image_lists_one_face_whatever_the_detector_said(detector):
    """A grayscale portrait once listed three faces (two boxes on the sweater) while its label and
    instance maps held one: a whole-image parse is one face in every output."""
    image = np.zeros((256, 256, 3), np.uint8)
    paint_face(image, filling(256))
    detector.boxes = [Face(128, 140, 160, 0.0, 30.0), Face(60, 230, 30, 0.0, 2.0), Face(200, 230, 30, 0, 2)]
    model, _ = face_model()
    result = parse_faces(model, image, instances=True)
    assert result.whole_image and len(result.faces) == 1 and len(result.faces_json()) == 1
    assert set(np.unique(result.instances)) == {0, 1}


def test_the_check_runs_without_tta_and_the_faces_kept_with_it(detector):
    image = np.zeros((240, 400, 3), np.uint8)
    paint_face(image, Face(110, 120, 90, 0.0))
    detector.boxes = [Face(110, 120, 90, 0.0), Face(300, 120, 90, 0.0)]  # the second on nothing
    model, parser = face_model(tta="flip")
    result = parse_faces(model, image)
    assert len(result.faces) == 1
    assert parser.calls == [(2, "none"), (1, "flip")]


def moving_clip(frames: int = 24) -> tuple[list[np.ndarray], list[Face]]:
    clip, truth = [], []
    for t in range(frames):
        face = Face(120 + 4 * t, 120 + 2 * t, 70, 0.0)
        frame = np.zeros((240, 320, 3), np.uint8)
        paint_face(frame, face)
        clip.append(frame)
        truth.append(face)
    return clip, truth


def test_video_searches_every_few_frames_and_follows_the_face_by_its_parse(detector):
    clip, truth = moving_clip()
    detector.boxes = [truth[0]]  # the detector sees the face where it was at the start, only
    model, parser = face_model()
    video = FaceVideo(model, smoothing=0.5, detect_every=10)
    results = [video(frame, instances=True) for frame in clip]
    assert detector.calls == 3  # frames 0, 10, 20
    assert all(len(r.faces) == 1 for r in results)
    track = video.tracks[0].face
    assert abs(track.cx - truth[-1].cx) < 6 and abs(track.cy - truth[-1].cy) < 6  # followed, 92 px on
    last = results[-1]
    painted = paint_face(np.zeros_like(clip[-1]), truth[-1])
    assert (last.ids == painted).mean() > 0.95
    assert last.probs is None and last.crops.shape == (1, 19, SIZE, SIZE)  # no full-frame probabilities
    assert all(n == 1 for n, _ in parser.calls[1:])  # one crop per frame once tracking


def test_video_parses_tracked_faces_with_one_pass_unless_told(detector):
    """A video's tracked faces are parsed once per frame even when the model's own TTA is eight passes
    (the moving average over frames stands in for it); tta=None keeps the model's."""
    clip, truth = moving_clip(5)
    for tta, expected in (("none", "none"), (None, "flip+scales"), ("flip", "flip")):
        detector.boxes = [truth[0]]
        model, parser = face_model(tta="flip+scales")
        video = FaceVideo(model, detect_every=100, **({} if tta == "none" else {"tta": tta}))
        for frame in clip:
            assert len(video(frame).faces) == 1
        followed = [t for _, t in parser.calls[-4:]]  # frames 1-4: the tracked face alone
        assert followed == [expected] * 4


def test_video_drops_a_track_whose_parse_is_no_face(detector):
    clip, truth = moving_clip(6)
    detector.boxes = [truth[0]]
    model, _ = face_model()
    video = FaceVideo(model, patience=2, detect_every=100)
    for frame in clip[:3]:
        assert len(video(frame).faces) == 1
    empty = np.zeros_like(clip[0])
    shown = [len(video(empty).faces) for _ in range(4)]
    assert shown[-1] == 0 and video.tracks == []


def test_rotated_copies_search_only_where_the_upright_search_found_a_face(detector):
    """The cheaper search: upright first; the rotated copies leave out the faces found upright (a
    false upright box hides nothing), and a face found on them is added."""
    image = np.zeros((300, 500, 3), np.uint8)
    upright, rolled = Face(110, 150, 90, 0.0, 9.0), Face(370, 150, 90, 20.0, 4.0)
    paint_face(image, upright)
    paint_face(image, rolled)
    detector.boxes = [upright, Face(250, 60, 40, 0.0, 2.0)]  # the second on nothing
    detector.rotated = [rolled]
    model, _ = face_model()
    result = parse_faces(model, image)
    (first, skip_first), (rest, skip_rest) = detector.searches
    assert first == (0.0,) and skip_first == [] and 0.0 not in rest and len(rest) == 4
    assert skip_rest == [upright]
    assert sorted(round(f.cx) for f in result.faces) == [110, 370]


def test_skipped_faces_are_blanked_on_every_copy(monkeypatch):
    from segformer.faces import detect

    views = []

    class Cascade:
        def detectMultiScale2(self, view, **options):  # OpenCV's name
            views.append(view.copy())
            return (), ()

    monkeypatch.setattr(detect, "_cascade", lambda name: Cascade())
    image = np.random.default_rng(0).integers(0, 256, (160, 200, 3), dtype=np.uint8)
    detect.detect_faces(image, angles=(0.0, 20.0))
    detect.detect_faces(image, angles=(0.0, 20.0), skip=[Face(65, 55, 50)])
    plain, plain_rotated, upright, rotated = views
    assert (plain == 128).mean() < 0.02 and (plain_rotated == 128).mean() < 0.02
    assert (upright[15:95, 25:105] == 128).all() and (upright == 128).mean() < 0.25
    assert (rotated == 128).mean() > 0.08  # the skipped square, turned with the copy


def test_an_aligned_face_kept_whole_has_exactly_its_whole_image_labels(detector):
    """With the model's whole-image parse in the protocol, an image kept as one crop gets exactly the
    labels of `faces=False` (not its working-size parse pasted back), from that one parse."""
    from dataclasses import replace

    image = np.zeros((300, 300, 3), np.uint8)
    painted = paint_face(image, filling(300))
    model, parser = face_model()
    asked = []

    def whole(im, return_probs):
        asked.append(return_probs)
        d = ((im.astype(np.float32)[..., None, :] - PALETTE) ** 2).sum(-1)
        return d.argmin(-1).astype(np.uint8), None

    result = parse_faces(replace(model, whole=whole), image, instances=True)
    assert asked == [False] and parser.calls == [] and detector.calls == 0
    assert result.whole_image and np.array_equal(result.ids, painted)
    assert np.array_equal(result.instances, (painted > 0).astype(np.uint8)) and len(result.faces) == 1


def test_the_default_path_on_an_aligned_portrait_is_the_whole_image_path(detector):
    from segformer.inference.predictor import Predictor
    from test_faces import PaletteModel

    image = np.zeros((200, 200, 3), np.uint8)
    paint_face(image, filling(200))
    p = Predictor(PaletteModel(), image_size=96, label_set="celebamask", faces=True, backend="torch")
    assert np.array_equal(p.predict(image), p.predict_arrays([image], faces=False)[0])
    ids, probs = p.predict(image, return_probs=True)
    whole_ids, whole_probs = p.predict_arrays([image], return_probs=True, faces=False)[0]
    assert np.array_equal(ids, whole_ids) and np.array_equal(probs, whole_probs)
    assert detector.calls == 0
