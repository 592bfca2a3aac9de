"""Drawing primitives of the synthetic face generator (`segformer.data.synthetic`): colours, a canvas
painting image and mask in a face frame, a cluttered background, and the finishing texture (hair
strands, lighting, shading, blur, noise)."""

from __future__ import annotations

import math

import cv2
import numpy as np

# class ids of the CelebAMask-HQ label set (data/labels.py)
BG, SKIN, NOSE, EYE_G, L_EYE, R_EYE, L_BROW, R_BROW, L_EAR, R_EAR = range(10)
MOUTH, U_LIP, L_LIP, HAIR, HAT, EAR_R, NECK_L, NECK, CLOTH = range(10, 19)


# -- colours ----------------------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] -> RGB float in [0, 255]."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb) * 255.0


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return _hsv(rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.08, 1.0))


def _skin_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.2:
        return _random_colour(rng)
    return _hsv(rng.uniform(0.01, 0.1), rng.uniform(0.15, 0.6), rng.uniform(0.3, 0.97))


_NATURAL_HAIR = np.array(
    [
        [25, 20, 18],
        [60, 40, 30],
        [100, 70, 45],
        [150, 110, 70],
        [210, 180, 120],
        [170, 170, 165],
        [140, 60, 30],
    ],
    dtype=np.float64,
)


def _hair_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.3:
        return _random_colour(rng)
    return np.clip(_NATURAL_HAIR[rng.integers(len(_NATURAL_HAIR))] * rng.uniform(0.7, 1.3), 0, 255)


def _apart(colour: np.ndarray, ref: np.ndarray, rng: np.random.Generator, dist: float) -> np.ndarray:
    """`colour`, pushed away from `ref` until they are at least `dist` apart (RGB Euclidean), so that
    every part is visible against the part it is painted on."""
    d = colour - ref
    n = float(np.linalg.norm(d))
    if n >= dist:
        return colour
    direction = d / n if n > 1e-6 else rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    for sign in (1.0, -1.0):
        out = ref + sign * direction * dist
        if np.all((out >= 0) & (out <= 255)):
            return out
    # Fall back to the brightness axis, which always has room on one side.
    return np.full(3, 255.0) if ref.mean() < 128 else np.zeros(3)


def _shade(colour: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    return np.clip(colour * rng.uniform(1 - amount, 1 + amount) + rng.normal(0, 8, 3), 0, 255)


def _tuple(colour: np.ndarray) -> tuple[float, float, float]:
    return (float(colour[0]), float(colour[1]), float(colour[2]))


# -- geometry ---------------------------------------------------------------------------------------


def _ellipse(
    cu: float, cv: float, ru: float, rv: float, t0: float = 0.0, t1: float = 2 * math.pi, n: int = 40
):
    t = np.linspace(t0, t1, n)
    return np.stack([cu + ru * np.cos(t), cv + rv * np.sin(t)], axis=1)


class _Canvas:
    """Image + mask with a face frame: local coordinates (u, v) in units of the face half-width, u to
    the image's right and v down before the head's roll is applied."""

    SHIFT = 4  # sub-pixel precision of OpenCV's polygon filling (coordinates x 16)

    def __init__(self, image: np.ndarray, cx: float, cy: float, scale: float, roll: float) -> None:
        self.image = image
        self.mask = np.zeros(image.shape[:2], dtype=np.uint8)
        self.size = image.shape[0]
        self.cx, self.cy, self.scale, self.roll = cx, cy, scale, roll
        c, s = math.cos(roll), math.sin(roll)
        self.rot = np.array([[c, -s], [s, c]]) * scale

    def to_pixels(self, pts: np.ndarray) -> np.ndarray:
        xy = pts @ self.rot.T + (self.cx, self.cy)
        return np.round(xy * (1 << self.SHIFT)).astype(np.int32)

    def fill(self, pts: np.ndarray, cls: int | None, colour: np.ndarray | None) -> None:
        """Fill a polygon given in local coordinates, in the mask (class id) and/or the image."""
        poly = [self.to_pixels(pts)]
        if cls is not None:
            cv2.fillPoly(self.mask, poly, cls, cv2.LINE_8, self.SHIFT)
        if colour is not None:
            cv2.fillPoly(self.image, poly, _tuple(colour), cv2.LINE_AA, self.SHIFT)

    def line(self, pts: np.ndarray, thickness: float, cls: int | None, colour: np.ndarray | None) -> None:
        """A polyline of `thickness` local units."""
        poly = [self.to_pixels(pts)]
        t = max(1, round(thickness * self.scale))
        if cls is not None:
            cv2.polylines(self.mask, poly, False, cls, t, cv2.LINE_8, self.SHIFT)
        if colour is not None:
            cv2.polylines(self.image, poly, False, _tuple(colour), t, cv2.LINE_AA, self.SHIFT)

    def region(self, pts: np.ndarray) -> np.ndarray:
        """Boolean (H, W) inside a polygon."""
        out = np.zeros(self.mask.shape, dtype=np.uint8)
        cv2.fillPoly(out, [self.to_pixels(pts)], 1, cv2.LINE_8, self.SHIFT)
        return out.astype(bool)


# -- background -------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A gradient plus random shapes in random colours (clutter the model must call background)."""
    # Bilinear blend of four random corner colours: a smooth gradient for the cost of one resize.
    corners = np.stack([_random_colour(rng) for _ in range(4)]).reshape(2, 2, 3).astype(np.uint8)
    image = cv2.resize(corners, (size, size), interpolation=cv2.INTER_LINEAR)
    for _ in range(rng.integers(2, 10)):
        colour = _tuple(_random_colour(rng))
        kind = rng.integers(4)
        x, y = rng.uniform(-0.1, 1.1, 2) * size
        r = rng.uniform(0.03, 0.35) * size
        if kind == 0:
            axes = (int(r), int(r * rng.uniform(0.3, 1.0)))
            cv2.ellipse(image, (int(x), int(y)), axes, rng.uniform(0, 180), 0, 360, colour, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(image, (int(x), int(y)), (int(x + r), int(y + r * rng.uniform(0.3, 2))), colour, -1)
        elif kind == 2:
            pts = (rng.uniform(-1, 1, (rng.integers(3, 7), 2)) * r + (x, y)).astype(np.int32)
            cv2.fillPoly(image, [pts], colour, cv2.LINE_AA)
        else:
            x2, y2 = rng.uniform(0, 1, 2) * size
            cv2.line(
                image, (int(x), int(y)), (int(x2), int(y2)), colour, int(rng.integers(1, 8)), cv2.LINE_AA
            )
    return image


def _occluder(canvas: _Canvas, rng: np.random.Generator) -> None:
    """Something in front of the face (a hand, a microphone): background in the labels."""
    size = canvas.size
    x, y = rng.uniform(0.2, 0.8) * size, rng.uniform(0.5, 1.0) * size
    axes = (int(size * rng.uniform(0.05, 0.15)), int(size * rng.uniform(0.1, 0.3)))
    angle = rng.uniform(0, 180)
    colour = _tuple(_random_colour(rng))
    cv2.ellipse(canvas.image, (int(x), int(y)), axes, angle, 0, 360, colour, -1, cv2.LINE_AA)
    cv2.ellipse(canvas.mask, (int(x), int(y)), axes, angle, 0, 360, BG, -1, cv2.LINE_8)


# -- texture ----------------------------------------------------------------------------------------


def _texture(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, hair: np.ndarray) -> None:
    """Hair strands, lighting, low-frequency shading, blur and noise, in place."""
    S = image.shape[0]
    hair_px = mask == HAIR
    if hair_px.any():
        strands = image.copy()
        ys, xs = np.nonzero(hair_px[:: max(1, S // 32), :: max(1, S // 32)])
        step = max(1, S // 32)
        for _ in range(min(60, len(ys))):
            k = rng.integers(len(ys))
            x0, y0 = xs[k] * step, ys[k] * step
            ang = rng.uniform(math.pi / 3, 2 * math.pi / 3)
            length = rng.uniform(0.05, 0.2) * S
            x1, y1 = x0 + math.cos(ang) * length, y0 + math.sin(ang) * length
            shade = _tuple(np.clip(hair * rng.uniform(0.6, 1.4) + rng.normal(0, 10, 3), 0, 255))
            cv2.line(strands, (int(x0), int(y0)), (int(x1), int(y1)), shade, 1, cv2.LINE_AA)
        image[hair_px] = strands[hair_px]

    # lighting: a linear gradient plus a smooth random field, built at 5 x 5 and upsampled
    ramp = np.linspace(-1.0, 1.0, 5, dtype=np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    light = 1 + rng.uniform(0.0, 0.15) * (ramp[None, :] * math.cos(ang) + ramp[:, None] * math.sin(ang))
    light += rng.uniform(0.0, 0.2) * rng.uniform(-1, 1, (5, 5)).astype(np.float32)
    light = cv2.resize(light, (S, S), interpolation=cv2.INTER_CUBIC)
    out = image.astype(np.float32) * light[..., None]
    if rng.random() < 0.5:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=rng.uniform(0.4, 1.2))
    # sensor noise: mostly luminance (one field for the three channels, three times cheaper)
    out += rng.standard_normal((S, S, 1), dtype=np.float32) * rng.uniform(1.0, 8.0)
    np.clip(out + 0.5, 0, 255, out=out)
    image[...] = out.astype(np.uint8)
