"""Synthetic face parsing: a seeded procedural generator of face-like images with CelebAMask-HQ labels.

It is the embedded default data that lets every command run on a fresh machine. Each
image is a painted head on a cluttered background: skin oval with a chin, hair cap (fringe, long hair,
side locks, or bald), ears, brows, eyes with iris and eyelid, nose, lips with an open or closed mouth,
neck, clothes, and sometimes glasses, a hat, earrings or a necklace, plus an occasional occluder.
The head has a random size, position, in-plane roll and yaw (a cylinder model: features slide
sideways and foreshorten, the far ear disappears), every part has a random colour (natural tones most
of the time, anything some of the time, always distinguishable from the part beneath it), and the
picture gets hair strands, lighting gradients, low-frequency shading, blur and sensor noise. A model
has to learn shapes and layout, not colours.

Sides follow the data: ``l_eye`` / ``l_brow`` / ``l_ear`` are the subject's left, on the image's right.
Layers are painted in the order of the official CelebAMask-HQ merge where parts overlap (glasses
under eyes and brows, earrings over ears, cloth over neck).

Class frequencies follow the real data's (shared CE7454 sample -> this generator, share of pixels):
background 29% -> 38%, skin 25% -> 19%, hair 31% -> 26%, neck 4% -> 6%, nose 2.1% -> 1.8%, brows 0.4%
-> 0.4% each, lips 0.4/0.7% -> 0.5/0.7%, a hat, glasses or a necklace in about 5% of images each, the
necklace under 0.1% of pixels. Eyes are drawn about twice as large as real ones (0.46% instead of 0.22%
each) so that they stay learnable at 128 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import SegformerError
from ..fileio import staged_output, write_json
from .drawing import (
    CLOTH,
    EAR_R,
    EYE_G,
    HAIR,
    HAT,
    L_BROW,
    L_EAR,
    L_EYE,
    L_LIP,
    MOUTH,
    NECK,
    NECK_L,
    NOSE,
    R_BROW,
    R_EAR,
    R_EYE,
    SKIN,
    U_LIP,
    _apart,
    _background,
    _Canvas,
    _ellipse,
    _hair_colour,
    _hsv,
    _occluder,
    _random_colour,
    _shade,
    _skin_colour,
    _texture,
)
from .io import save_image, save_mask
from .labels import CELEBAMASK

GENERATOR_VERSION = 1
DATASET_NAMES = ("train", "val", "test", "dataset.json")  # what a dataset folder holds at its top


# -- the head ---------------------------------------------------------------------------------------


@dataclass
class _Head:
    """Pose, proportions and base colours of one head, in local units (the face half-width)."""

    yaw: float  # head turn in radians (a cylinder model: features slide sideways and foreshorten)
    bh: float  # face half-height / half-width
    u0: float  # sideways shift of the skull with the turn
    skin: np.ndarray
    hair: np.ndarray
    bald: bool
    long_hair: bool
    eye_v: float  # height of the eye line
    neck_w: float
    shoulder_v: float  # where clothes start; below the frame for a close crop
    hair_w: float
    hair_top: float
    curl: float  # amplitude of a wavy hair outline
    ear_v: float = 0.0  # set by _ears
    eye_phi: float = 0.0  # set by _eyes_and_brows: angle of the eyes on the head cylinder
    eye_w: float = 0.0

    def side(self, phi: float) -> tuple[float, float]:
        """(u, foreshortening) of a point at angle phi on the head cylinder."""
        return math.sin(phi + self.yaw), max(math.cos(phi + self.yaw), 0.2)


def generate_face(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic face: (image (S, S, 3) uint8 RGB, mask (S, S) uint8 CelebAMask-HQ class ids)."""
    if size < 16:
        raise SegformerError(f"synthetic faces need size >= 16, got {size}")
    image = _background(rng, size)
    roll = math.radians(float(np.clip(rng.normal(0, 6), -20, 20)))
    yaw = float(np.clip(rng.normal(0, 0.18), -0.5, 0.5))
    half_width = size * rng.uniform(0.25, 0.31)  # of the face, in pixels
    canvas = _Canvas(
        image, size * (0.5 + rng.normal(0, 0.035)), size * rng.uniform(0.44, 0.53), half_width, roll
    )
    bh = rng.uniform(1.15, 1.35)
    skin = _skin_colour(rng)
    hair = _apart(_hair_colour(rng), skin, rng, 60)
    bald = bool(rng.random() < 0.04)
    long_hair = not bald and bool(rng.random() < 0.6)
    head = _Head(
        yaw=yaw,
        bh=bh,
        u0=0.12 * math.sin(yaw),
        skin=skin,
        hair=hair,
        bald=bald,
        long_hair=long_hair,
        eye_v=rng.uniform(-0.18, -0.02) * bh,
        neck_w=rng.uniform(0.5, 0.68),
        shoulder_v=rng.uniform(1.05, 1.75) * bh,
        hair_w=rng.uniform(1.12, 1.45),
        hair_top=-bh * rng.uniform(1.1, 1.4),
        curl=rng.uniform(0.0, 0.06) if rng.random() < 0.5 else 0.0,
    )
    # Back to front; where parts overlap, the order of the official CelebAMask-HQ merge.
    if head.long_hair:
        _long_hair(canvas, head, rng)
    _neck_and_clothes(canvas, head, rng)
    _ears(canvas, head, rng)
    _face(canvas, head, rng)
    if not head.bald:
        _hair(canvas, head, rng)
    _nose(canvas, head, rng)
    _eyes_and_brows(canvas, head, rng)
    _mouth(canvas, head, rng)
    if rng.random() < 0.06:
        _glasses(canvas, head, rng)
    if rng.random() < 0.05:
        _hat(canvas, head, rng)
    if rng.random() < 0.08:
        _occluder(canvas, rng)
    _texture(image, canvas.mask, rng, head.hair)
    return image, canvas.mask


def _long_hair(canvas: _Canvas, head: _Head, rng: np.random.Generator) -> None:
    """Hair falling behind the neck and shoulders, flaring towards the ends, wavy when curly."""
    length = rng.uniform(0.6, 2.6) * head.bh
    w = head.hair_w * rng.uniform(1.0, 1.2)
    flare = rng.uniform(1.0, 1.5)
    top = _ellipse(head.u0, -0.2 * head.bh, w, head.bh, math.pi, 2 * math.pi, 24)
    vs = np.linspace(-0.2 * head.bh, length, 8)
    wave = head.curl * 3 * np.sin(vs * 5 + rng.uniform(0, 6))
    right = np.stack([head.u0 + w + (flare - 1) * w * (vs - vs[0]) / (vs[-1] - vs[0]) + wave, vs], 1)
    left = right[::-1] * [-1, 1] + [2 * head.u0, 0]
    canvas.fill(np.concatenate([top, right, left]), HAIR, head.hair)


def _neck_and_clothes(canvas: _Canvas, head: _Head, rng: np.random.Generator) -> None:
    """Neck, a rare necklace, clothes over the shoulders, sometimes an open collar."""
    u0, bh, neck_w, shoulder_v = head.u0, head.bh, head.neck_w, head.shoulder_v
    neck_colour = _apart(_shade(head.skin, rng, 0.15), head.skin, rng, 25)
    bottom = shoulder_v + 0.6
    neck = [
        [-neck_w + u0, 0.4 * bh],
        [neck_w + u0, 0.4 * bh],
        [neck_w * 1.25, bottom],
        [-neck_w * 1.25, bottom],
    ]
    canvas.fill(np.array(neck), NECK, neck_colour)
    if rng.random() < 0.05:  # necklace: a thin chain across the neck, sometimes with a pendant
        chain = _apart(_random_colour(rng), neck_colour, rng, 60)
        chain_v = rng.uniform(0.85, 1.1) * bh
        t = np.linspace(-neck_w * 0.95, neck_w * 0.95, 16)
        canvas.line(
            np.stack([t + u0 * 0.5, chain_v + 0.25 * (1 - (t / neck_w) ** 2)], 1),
            rng.uniform(0.05, 0.08),
            NECK_L,
            chain,
        )
        if rng.random() < 0.5:
            canvas.fill(_ellipse(u0 * 0.5, chain_v + 0.3, 0.06, 0.08, n=16), NECK_L, chain)

    cloth = _apart(_random_colour(rng), neck_colour, rng, 60)
    width = rng.uniform(2.0, 3.2)
    shoulders = _ellipse(0, shoulder_v + 1.0, width, 1.0, math.pi, 2 * math.pi, 30)
    canvas.fill(np.concatenate([shoulders, [[width, 10], [-width, 10]]]), CLOTH, cloth)
    if rng.random() < 0.45:  # an open collar: skin in a V below the neck
        depth = rng.uniform(0.3, 0.9)
        v_neck = [[-neck_w * 1.05, shoulder_v], [neck_w * 1.05, shoulder_v], [0, shoulder_v + depth]]
        canvas.fill(np.array(v_neck), NECK, neck_colour)
    if rng.random() < 0.5:  # a collar line: texture on the clothes
        collar = [
            [-neck_w * 1.3, shoulder_v + 0.05],
            [0, shoulder_v + 0.5],
            [neck_w * 1.3, shoulder_v + 0.05],
        ]
        canvas.line(np.array(collar), 0.06, None, _shade(cloth, rng, 0.4))


def _ears(canvas: _Canvas, head: _Head, rng: np.random.Generator) -> None:
    """Ears at the sides of the head (the far one hidden when the head turns), sometimes earrings."""
    ear_colour = _apart(_shade(head.skin, rng, 0.1), head.skin, rng, 30)
    head.ear_v = head.eye_v + rng.uniform(0.1, 0.3)
    ear_h, ear_w = rng.uniform(0.27, 0.37), rng.uniform(0.14, 0.2)
    earring = rng.random() < 0.22
    earring_colour = _apart(_random_colour(rng), head.skin, rng, 70)
    # l_ear is the subject's left ear: at +90 degrees on the head, on the image's right.
    for cls, phi in ((L_EAR, math.pi / 2), (R_EAR, -math.pi / 2)):
        if math.cos(phi + head.yaw) < -0.12:  # turned away: hidden behind the head
            continue
        sign = 1.0 if phi > 0 else -1.0
        cu = math.sin(phi + head.yaw) + head.u0 + sign * 0.06
        canvas.fill(_ellipse(cu, head.ear_v, ear_w, ear_h, n=24), cls, ear_colour)
        t0 = -1.2 if sign > 0 else math.pi - 1.2  # the inner fold, on the outer half of the ear
        fold = _ellipse(cu + sign * 0.02, head.ear_v, ear_w * 0.5, ear_h * 0.6, t0, t0 + 2.4, 10)
        canvas.line(fold, 0.03, None, _shade(ear_colour, rng, 0.3))
        if earring:
            ey = head.ear_v + ear_h + rng.uniform(0.02, 0.08)
            r = rng.uniform(0.07, 0.14)
            if rng.random() < 0.5:
                canvas.fill(_ellipse(cu, ey, r, r * rng.uniform(1.0, 1.6), n=16), EAR_R, earring_colour)
            else:
                canvas.line(_ellipse(cu, ey + r, r, r * 1.2, n=16), 0.035, EAR_R, earring_colour)


def _face(canvas: _Canvas, head: _Head, rng: np.random.Generator) -> None:
    """The skin: an oval narrowing into a chin."""
    chin = rng.uniform(0.12, 0.32)
    t = np.linspace(0, 2 * math.pi, 48)
    fu, fv = np.cos(t), np.sin(t) * head.bh
    fu = fu * np.where(fv > 0, 1 - chin * (fv / head.bh) ** 2, 1.0)
    canvas.fill(np.stack([fu + head.u0, fv], axis=1), SKIN, head.skin)


def _hair(canvas: _Canvas, head: _Head, rng: np.random.Generator) -> None:
    """The hair cap over the forehead down to the temples (a hairline or a fringe), and side locks."""
    u0, bh = head.u0, head.bh
    centre = [u0, -0.25 * bh]
    outer = _ellipse(*centre, head.hair_w, -head.hair_top - 0.25 * bh, math.pi, 2 * math.pi, 28)
    radial = 1 + head.curl * np.sin(np.linspace(0, rng.integers(6, 16) * math.pi, 28) + rng.uniform(0, 6))
    outer = (outer - centre) * radial[:, None] + centre
    side_v = rng.uniform(-0.1, 0.2) * bh
    uu = np.linspace(0.98, -0.98, 14)
    if rng.random() < 0.3:  # fringe: a low, ragged hairline
        line_v = rng.uniform(-0.45, -0.2) * bh + rng.uniform(-0.05, 0.05, 14) * bh
    else:  # high in the middle, lower at the temples, dipping at a parting
        top = rng.uniform(-0.85, -0.6) * bh
        temple = rng.uniform(-0.55, -0.35) * bh
        part = rng.uniform(-0.4, 0.4)
        line_v = top + (temple - top) * np.abs(uu) ** 1.5 + 0.08 * np.exp(-((uu - part) ** 2) / 0.02)
    hairline = np.stack([uu + u0, line_v], axis=1)
    ends = [[head.hair_w + u0, side_v], [0.98 + u0, side_v]]
    cap = np.concatenate([[[-head.hair_w + u0, side_v]], outer, ends, hairline, [[-0.98 + u0, side_v]]])
    canvas.fill(cap, HAIR, head.hair)
    for phi in (math.pi / 2, -math.pi / 2):  # side locks cover an ear now and then
        if head.long_hair and rng.random() < 0.35:
            sign = 1.0 if phi > 0 else -1.0
            cu = math.sin(phi + head.yaw) + u0
            lock = [
                [cu - sign * 0.15, -0.3 * bh],
                [cu + sign * 0.3, -0.3 * bh],
                [cu + sign * 0.35, head.ear_v + 0.6],
                [cu - sign * 0.05, head.ear_v + 0.7],
            ]
            canvas.fill(np.array(lock), HAIR, head.hair)


def _nose(canvas: _Canvas, head: _Head, rng: np.random.Generator) -> None:
    """A skin-toned wedge from between the eyes to the tip, with darker nostrils (image only)."""
    nu, nf = head.side(0.0)
    nu = nu * 1.15 + head.u0  # the tip sticks out, so it slides further with the turn
    colour = _apart(_shade(head.skin, rng, 0.12), head.skin, rng, 35)
    top_v, tip_v = head.eye_v + rng.uniform(0.02, 0.1), rng.uniform(0.28, 0.42) * head.bh
    bw, tw = rng.uniform(0.22, 0.32) * nf, rng.uniform(0.08, 0.12) * nf
    outline = [
        [nu - tw, top_v],
        [nu + tw, top_v],
        [nu + bw, tip_v - 0.05],
        [nu + bw * 0.7, tip_v + 0.05],
        [nu, tip_v + 0.08],
        [nu - bw * 0.7, tip_v + 0.05],
        [nu - bw, tip_v - 0.05],
    ]
    canvas.fill(np.array(outline), NOSE, colour)
    nostril = _shade(colour, rng, 0.5) * 0.6
    for s in (-1, 1):
        canvas.fill(_ellipse(nu + s * bw * 0.45, tip_v, bw * 0.22, 0.035, n=12), None, nostril)


def _eyes_and_brows(canvas: _Canvas, head: _Head, rng: np.random.Generator) -> None:
    """Almond eyes with iris, pupil and lid line; tapered brows above them."""
    head.eye_phi = rng.uniform(0.36, 0.48)
    head.eye_w, eh = rng.uniform(0.19, 0.25), rng.uniform(0.08, 0.12)
    if rng.random() < 0.05:
        eh *= 0.3  # closed or squinting
    if rng.random() < 0.7:  # whitish most of the time
        sclera = _hsv(rng.random(), rng.uniform(0, 0.25), rng.uniform(0.7, 1.0))
    else:
        sclera = _random_colour(rng)
    sclera = _apart(sclera, head.skin, rng, 50)
    iris = _apart(_random_colour(rng) * 0.6, sclera, rng, 60)
    brow = _apart(
        _shade(head.hair, rng, 0.2) if rng.random() < 0.7 else _random_colour(rng), head.skin, rng, 55
    )
    brow_gap, brow_arch, brow_t = rng.uniform(0.1, 0.2), rng.uniform(0.0, 0.1), rng.uniform(0.11, 0.17)
    eye_v = head.eye_v
    eyes = []
    # l_eye / l_brow: the subject's left, at a positive angle on the head, on the image's right.
    for eye_cls, brow_cls, phi in ((L_EYE, L_BROW, head.eye_phi), (R_EYE, R_BROW, -head.eye_phi)):
        u, f = head.side(phi)
        u += head.u0
        w = head.eye_w * f
        t = np.linspace(0, math.pi, 12)
        upper = np.stack([u + w * np.cos(t), eye_v - eh * np.sin(t) ** 0.8], axis=1)
        lower = np.stack([u - w * np.cos(t), eye_v + eh * 0.7 * np.sin(t) ** 0.8], axis=1)
        almond = np.concatenate([upper, lower])
        canvas.fill(almond, eye_cls, sclera)
        eyes.append((almond, u, w))
        sign = 1.0 if phi > 0 else -1.0  # the brow runs from the nose outwards, thinning
        bu = np.linspace(u - sign * w * 1.05, u + sign * w * 1.25, 10)
        s = np.linspace(0, 1, 10)
        centre = eye_v - eh - brow_gap - brow_arch * np.sin(s * math.pi) + 0.05 * s
        thick = brow_t * (1 - 0.5 * s)
        band = np.concatenate(
            [np.stack([bu, centre - thick / 2], 1), np.stack([bu, centre + thick / 2], 1)[::-1]]
        )
        canvas.fill(band, brow_cls, brow)
    lid = np.clip(sclera * 0.3, 0, 255)
    for almond, u, w in eyes:  # iris and pupil clipped to the eye, then the lid line (image only)
        inside = canvas.region(almond)
        painted = _Canvas(canvas.image.copy(), canvas.cx, canvas.cy, canvas.scale, canvas.roll)
        gaze = rng.uniform(-0.3, 0.3) * w
        painted.fill(_ellipse(u + gaze, eye_v, eh, eh, n=20), None, iris)
        painted.fill(_ellipse(u + gaze, eye_v, eh * 0.4, eh * 0.4, n=12), None, iris * 0.2)
        canvas.image[inside] = painted.image[inside]
        canvas.line(almond[:12], 0.025, None, lid)


def _mouth(canvas: _Canvas, head: _Head, rng: np.random.Generator) -> None:
    """Upper and lower lips around a slit, or around an open mouth (sometimes showing teeth)."""
    mu, mf = head.side(0.0)
    mu += head.u0
    mv = rng.uniform(0.52, 0.68) * head.bh
    mw = rng.uniform(0.3, 0.42) * mf
    gap = rng.uniform(0.07, 0.2) if rng.random() < 0.55 else 0.0
    smile = rng.uniform(-0.05, 0.08)
    ut, lt = rng.uniform(0.09, 0.14), rng.uniform(0.12, 0.19)
    if rng.random() < 0.7:  # reddish most of the time
        lip = _hsv(rng.uniform(-0.03, 0.03) % 1, rng.uniform(0.3, 0.8), rng.uniform(0.35, 0.9))
    else:
        lip = _random_colour(rng)
    lip = _apart(lip, head.skin, rng, 45)
    uu = np.linspace(-1, 1, 17)
    xs = mu + mw * uu
    slit = mv - smile * uu**2
    env = (1 - uu**2) ** 0.6
    bow = 1 - 0.35 * np.exp(-(uu**2) / 0.02)  # the dip in the middle of the upper lip

    def band(v0: np.ndarray, v1: np.ndarray, x: np.ndarray = xs) -> np.ndarray:
        return np.concatenate([np.stack([x, v0], 1), np.stack([x, v1], 1)[::-1]])

    top_open, bottom_open = slit - gap / 2 * env, slit + gap / 2 * env
    if gap > 0:
        inside = _apart(_hsv(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.05, 0.9)), lip, rng, 50)
        canvas.fill(band(top_open, bottom_open), MOUTH, inside)
        if rng.random() < 0.5:  # teeth
            teeth = _apart(np.full(3, 230.0) * rng.uniform(0.7, 1.0), inside, rng, 40)
            canvas.fill(band(top_open, slit, xs * 0.8 + mu * 0.2), None, teeth)
    canvas.fill(band(top_open - ut * env * bow, top_open), U_LIP, _shade(lip, rng, 0.1))
    canvas.fill(band(bottom_open, bottom_open + lt * env), L_LIP, lip)
    if gap == 0:
        canvas.line(np.stack([xs, slit], 1), 0.02, None, lip * 0.5)


def _glasses(canvas: _Canvas, head: _Head, rng: np.random.Generator) -> None:
    """Tinted lenses, frame, bridge and arms: painted over the eyes and brows in the image, but labelled
    under them (eye_g comes before the eyes and brows in the official merge)."""
    frame = _apart(_random_colour(rng), head.skin, rng, 60)
    tint = _random_colour(rng)
    alpha = rng.uniform(0.1, 0.6)
    lw, lh = head.eye_w * rng.uniform(1.4, 1.7), rng.uniform(0.17, 0.26)
    phis = (head.eye_phi, -head.eye_phi)
    lenses = [
        _ellipse(head.side(phi)[0] + head.u0, head.eye_v + 0.02, lw * head.side(phi)[1], lh, n=28)
        for phi in phis
    ]
    glass = canvas.region(lenses[0]) | canvas.region(lenses[1])
    canvas.image[glass] = (canvas.image[glass] * (1 - alpha) + tint * alpha).astype(np.uint8)
    labels = canvas.mask
    canvas.mask = np.zeros_like(labels)  # draw the glasses' labels apart, then merge them underneath
    for lens in lenses:
        canvas.fill(lens, 1, None)
        canvas.line(np.concatenate([lens, lens[:1]]), 0.05, 1, frame)
    (u1, f1), (u2, f2) = head.side(phis[0]), head.side(phis[1])
    bridge = [
        [u2 + head.u0 + lw * 0.8 * f2, head.eye_v - 0.05],
        [u1 + head.u0 - lw * 0.8 * f1, head.eye_v - 0.05],
    ]
    canvas.line(np.array(bridge), 0.05, 1, frame)
    for phi, sign in zip(phis, (1.0, -1.0), strict=True):
        u, f = head.side(phi)
        if math.cos(sign * math.pi / 2 + head.yaw) > -0.12:  # an arm to each visible ear
            ear_u = math.sin(sign * math.pi / 2 + head.yaw) + head.u0
            arm = [[u + head.u0 + sign * lw * f, head.eye_v - 0.05], [ear_u, head.ear_v - 0.1]]
            canvas.line(np.array(arm), 0.04, 1, frame)
    glasses = canvas.mask.astype(bool)
    canvas.mask = labels
    labels[glasses & ~np.isin(labels, (L_EYE, R_EYE, L_BROW, R_BROW))] = EYE_G


def _hat(canvas: _Canvas, head: _Head, rng: np.random.Generator) -> None:
    """A crown over the top of the head, often with a brim."""
    colour = _apart(_random_colour(rng), head.hair, rng, 60)
    brim_v = rng.uniform(-0.75, -0.45) * head.bh
    crown_w, crown_h = head.hair_w * rng.uniform(1.0, 1.2), rng.uniform(0.8, 1.2) * head.bh
    canvas.fill(_ellipse(head.u0, brim_v, crown_w, crown_h, math.pi, 2 * math.pi, 24), HAT, colour)
    if rng.random() < 0.6:
        brim = _ellipse(head.u0, brim_v, head.hair_w * rng.uniform(1.3, 1.8), rng.uniform(0.08, 0.18), n=30)
        canvas.fill(brim, HAT, _shade(colour, rng, 0.2))


# -- datasets ---------------------------------------------------------------------------------------


def _write_face(job: tuple[Path, int, int, int, int]) -> None:
    """Draw face i from ``default_rng((seed, i))`` and write it into its split of `root`."""
    root, seed, size, n_val, i = job
    image, mask = generate_face(np.random.default_rng((seed, i)), size)
    split = "val" if i < n_val else "train"
    stem = f"synth_{i:06d}"
    save_image(root / split / "images" / f"{stem}.jpg", image, quality=95)
    save_mask(root / split / "masks" / f"{stem}.png", mask, CELEBAMASK)


def write_synthetic_dataset(
    out: str | Path,
    num: int = 1000,
    size: int = 256,
    seed: int = 0,
    val_fraction: float = 0.1,
    overwrite: bool = False,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """Write `num` synthetic faces in the folder layout: ``OUT/{train,val}/{images,masks}`` (JPEG images,
    mode-P PNG masks) plus ``OUT/dataset.json`` describing how it was made. Face i is drawn from
    ``default_rng((seed, i))``; the first round(num * val_fraction) faces form the val split, so the
    files do not depend on `workers` (processes drawing faces in parallel). The dataset is assembled
    in a staging folder and moved into place at the end (`segformer.fileio.staged_output`: the user's
    files in OUT are never replaced; an earlier synthetic dataset there only with `overwrite`)."""
    out = Path(out)
    if num < 1 or not 0.0 <= val_fraction < 1.0:
        raise SegformerError(f"{out}: need num >= 1 and 0 <= val_fraction < 1 (got {num}, {val_fraction})")
    n_val = round(num * val_fraction)
    with staged_output(out, "data synth", (), overwrite, names=DATASET_NAMES, what="a dataset") as tmp:
        jobs = [(tmp, seed, size, n_val, i) for i in range(num)]
        bar = tqdm(total=num, desc="synthetic faces", unit="img", disable=not progress)
        if workers > 1:
            import multiprocessing

            # spawn: the parent may hold threads (torch, OpenCV) that a fork would copy half-locked
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for _ in pool.imap_unordered(_write_face, jobs, chunksize=16):
                    bar.update()
        else:
            for job in jobs:
                _write_face(job)
                bar.update()
        bar.close()
        meta = {
            "generator": "segformer synthetic faces",
            "version": GENERATOR_VERSION,
            "label_set": CELEBAMASK.name,
            "num": num,
            "size": size,
            "seed": seed,
            "val_fraction": val_fraction,
            "splits": {"train": num - n_val, "val": n_val},
        }
        write_json(tmp / "dataset.json", meta)
    return out
