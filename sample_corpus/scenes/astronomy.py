"""Astronomy: a deep-sky star field with a small green box to count the stars in, and the
decorative parallax sketch (d = 1 / p)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

from sample_corpus.drawing import Scene, deco_canvas, decoy_box, fmt_num, get_font, inside, pick, text_box

_TINTS = ((1.0, 1.0, 1.0), (1.0, 0.93, 0.8), (0.85, 0.93, 1.0), (1.0, 0.85, 0.7))
_SKY = np.array([7, 8, 14], dtype=np.float32)


def _add_star(arr: np.ndarray, x: float, y: float, sigma: float, peak: float, tint: Sequence[float]) -> None:
    H, W = arr.shape[:2]
    r = int(math.ceil(4 * sigma))
    xi, yi = int(round(x)), int(round(y))
    x0, x1, y0, y1 = max(0, xi - r), min(W, xi + r + 1), max(0, yi - r), min(H, yi + r + 1)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma * sigma))
    patch = _SKY + peak * g[..., None] * np.asarray(tint, np.float32)
    np.maximum(arr[y0:y1, x0:x1], np.clip(patch, 0, 255).astype(np.uint8), out=arr[y0:y1, x0:x1])



def scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    """The star field: answer the number of stars inside the green box (decoy: a same-size region)."""
    W, H = size
    arr = np.empty((H, W, 3), np.uint8)
    arr[:] = _SKY.astype(np.uint8)
    bs = int(rng.integers(200, 300))
    x0 = int(rng.integers(300, W - 300 - bs))
    y0 = int(rng.integers(300, H - 300 - bs))
    inner = (x0, y0, x0 + bs, y0 + bs)
    frame = (x0 - 5, y0 - 5, x0 + bs + 5, y0 + bs + 5)
    want = int(rng.integers(5, 15))
    placed: list[tuple[float, float, float]] = []
    for _ in range(4000):
        if len(placed) >= want:
            break
        sig = float(rng.uniform(1.2, 2.6))
        m = math.ceil(3 * sig) + 3
        x, y = float(rng.uniform(x0 + m, x0 + bs - m)), float(rng.uniform(y0 + m, y0 + bs - m))
        if all(math.hypot(x - a, y - b) >= 3 * (sig + s) + 6 for a, b, s in placed):
            placed.append((x, y, sig))
    for x, y, sig in placed:
        _add_star(arr, x, y, sig, float(rng.uniform(110, 250)), pick(rng, _TINTS))
    n_out = int(W * H / 6500)
    outside = 0
    for _ in range(n_out):
        sig = float(rng.uniform(0.9, 2.8)) if rng.random() < 0.93 else float(rng.uniform(3.0, 5.0))
        x, y = float(rng.uniform(0, W)), float(rng.uniform(0, H))
        if inside(frame, x, y, 3 * sig + 8):
            continue
        peak = float(rng.uniform(25, 250)) if sig < 3 else 255.0
        _add_star(arr, x, y, sig, peak, pick(rng, _TINTS))
        outside += 1
    cv2.rectangle(arr, (frame[0], frame[1]), (frame[2], frame[3]), (0, 230, 0), 3)
    img = Image.fromarray(arr, "RGB")
    d = ImageDraw.Draw(img)
    field_no = int(rng.integers(1, 60))
    d.text(
        (30, H - 30),
        f"field {field_no:02d}  R band  300 s",
        font=get_font(22),
        fill=(120, 120, 120),
        anchor="ld",
    )
    n = len(placed)
    # decoy: same-size region far from the box
    decoy = decoy_box(rng, inner, size, (x0, y0), bs)
    field_density = outside / (W * H - (bs + 60) ** 2) * 1e4
    question = (
        f"This {W}x{H} deep-sky frame has a small green box drawn on it. How many stars lie fully inside the "
        f"green box?"
    )
    topic = {
        "overview": (
            f"The image is a {W}x{H} star field: a dark sky background with roughly {outside} point sources "
            f"of varying brightness, and a small green square marked near ({x0 + bs // 2}, {y0 + bs // 2})."
        ),
        "objects": "stars",
        "obj": "star",
        "box_name": "green box",
        "box_px": bs,
        "method": "threshold the grayscale pixels well above the dark sky level and count connected components",
        "bright": True,
        "thr": 40,
        "min_area": 3,
        "noun": "stars detected",
        "note": lambda k: (
            f"{k} stars in a {bs}x{bs} px box is {k / bs**2 * 1e4:.1f} per 100x100 px; the "
            f"surrounding field averages {field_density:.1f} per 100x100 px."
        ),
    }
    return Scene(img, "count", question, str(n), inner, decoy, "", topic)



def decorative(rng: np.random.Generator) -> Scene:
    """The parallax sketch: the parallax is in the question; the answer is the distance in pc."""
    p = float(pick(rng, (0.5, 0.25, 0.2, 0.1, 0.05, 0.04, 0.02)))
    dist = round(1 / p)
    img, d = deco_canvas(rng, (10, 12, 40))
    W, H = img.size
    sx, sy = 170, H // 2
    d.ellipse([sx - 110, sy - 60, sx + 110, sy + 60], outline=(180, 180, 220), width=3)
    d.ellipse([sx - 30, sy - 30, sx + 30, sy + 30], fill=(255, 210, 60))
    d.ellipse([sx - 12, sy - 72, sx + 12, sy - 48], fill=(80, 150, 255))
    tx, ty = W - 120, 110
    d.ellipse([tx - 18, ty - 18, tx + 18, ty + 18], fill=(255, 255, 255))
    d.line([(sx, sy - 60), (tx, ty)], fill=(200, 200, 200), width=3)
    d.line([(sx, sy), (tx, ty)], fill=(200, 200, 200), width=3)
    box = text_box(d, (W // 2 + 40, H - 90), f"p = {fmt_num(p)} arcsec", get_font(42), (255, 255, 255), "mm")
    return Scene(
        img,
        "decorative",
        (
            f"A nearby star has a measured annual parallax of {fmt_num(p)} arcsec (see the "
            f"sketch). What is its distance in parsecs?"
        ),
        f"{dist} pc",
        box,
        topic={
            "overview": f"The image is a small {W}x{H} schematic: the Sun, Earth's orbit and a distant star with sight lines.",
            "label": f"p = {fmt_num(p)} arcsec",
            "stated": f"The parallax ({fmt_num(p)} arcsec) is stated in the question.",
            "solution": (
                f"By definition d[pc] = 1 / p[arcsec] = 1 / {fmt_num(p)} = {dist} pc, about "
                f"{dist * 3.26:.1f} light-years."
            ),
        },
    )
