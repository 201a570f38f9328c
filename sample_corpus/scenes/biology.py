"""Biology: a stained tissue micrograph with a small outlined square to count the cells in, and
the decorative cell sketch (chromosomes of a gamete after meiosis)."""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image, ImageDraw

from sample_corpus.drawing import Scene, deco_canvas, decoy_box, get_font, inside, pick, text_box

_TISSUE = np.array(
    [(246, 228, 238), (241, 221, 233), (236, 214, 228), (231, 207, 223), (226, 200, 218)], np.uint8
)


def _draw_cell(arr: np.ndarray, rng: np.random.Generator, x: float, y: float, a: float, b: float) -> None:
    ang = float(rng.uniform(0, 180))
    body = tuple(int(v) for v in np.array([205, 165, 215]) + rng.integers(-12, 13, 3))
    cen = (int(round(x)), int(round(y)))
    cv2.ellipse(arr, cen, (int(a), int(b)), ang, 0, 360, body, -1, cv2.LINE_AA)
    cv2.ellipse(arr, cen, (int(a), int(b)), ang, 0, 360, (150, 100, 170), 2, cv2.LINE_AA)
    nuc = tuple(int(v) for v in np.array([80, 40, 110]) + rng.integers(-10, 11, 3))
    off = rng.uniform(-0.15, 0.15, 2) * a
    na, nb = max(5, int(a * rng.uniform(0.32, 0.42))), max(4, int(b * rng.uniform(0.34, 0.44)))
    cv2.ellipse(
        arr, (int(round(x + off[0])), int(round(y + off[1]))), (na, nb), ang, 0, 360, nuc, -1, cv2.LINE_AA
    )


def scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    """The micrograph: answer the number of cells inside the outlined square (decoy: a same-size region)."""
    W, H = size
    low = rng.random((H // 48 + 2, W // 48 + 2)).astype(np.float32)
    tex = cv2.resize(low, (W, H), interpolation=cv2.INTER_CUBIC)
    arr = _TISSUE[np.clip((tex * 5).astype(np.int32), 0, 4)].copy()
    bs = int(rng.integers(280, 380))
    x0 = int(rng.integers(int(0.1 * W), int(0.9 * W) - bs))
    y0 = int(rng.integers(int(0.1 * H), int(0.9 * H) - bs))
    inner = (x0, y0, x0 + bs, y0 + bs)
    frame = (x0 - 6, y0 - 6, x0 + bs + 6, y0 + bs + 6)
    want = int(rng.integers(7, 16))
    cells: list[tuple[float, float, float]] = []
    for _ in range(3000):
        if len(cells) >= want:
            break
        a = float(rng.uniform(18, 28))
        x, y = (
            float(rng.uniform(x0 + a + 6, x0 + bs - a - 6)),
            float(rng.uniform(y0 + a + 6, y0 + bs - a - 6)),
        )
        if all(math.hypot(x - p, y - q) >= a + r + 4 for p, q, r in cells):
            cells.append((x, y, a))
    n_in = len(cells)
    grid: dict[tuple[int, int], list[tuple[float, float, float]]] = {}
    for c in cells:
        grid.setdefault((int(c[0] // 64), int(c[1] // 64)), []).append(c)
    n_out = 0
    for _ in range(int(W * H / 5000)):
        a = float(rng.uniform(18, 28))
        x, y = float(rng.uniform(a + 2, W - a - 2)), float(rng.uniform(a + 2, H - a - 2))
        if inside(frame, x, y, a + 8):
            continue
        gx, gy = int(x // 64), int(y // 64)
        near = [c for dx in (-1, 0, 1) for dy in (-1, 0, 1) for c in grid.get((gx + dx, gy + dy), [])]
        if any(math.hypot(x - p, y - q) < a + r + 4 for p, q, r in near):
            continue
        grid.setdefault((gx, gy), []).append((x, y, a))
        cells.append((x, y, a))
        n_out += 1
    for x, y, a in cells:
        _draw_cell(arr, rng, x, y, a, a * float(rng.uniform(0.6, 0.9)))
    cv2.rectangle(arr, (frame[0], frame[1]), (frame[2], frame[3]), (25, 25, 25), 4)
    img = Image.fromarray(arr, "RGB")
    d = ImageDraw.Draw(img)
    d.rectangle([W - 330, H - 90, W - 330 + 200, H - 78], fill=(20, 20, 20))
    d.text((W - 230, H - 100), "50 um", font=get_font(30), fill=(20, 20, 20), anchor="md")
    decoy = decoy_box(rng, inner, size, (x0, y0), bs)
    field_density = n_out / (W * H - (bs + 80) ** 2) * 1e4
    question = (
        f"This stained tissue micrograph ({W}x{H}) has one small square region outlined in black. How many "
        f"complete cells (each with a single dark nucleus) lie inside the outlined square?"
    )
    topic = {
        "overview": (
            f"The image is a {W}x{H} micrograph of densely packed, roughly elliptical cells with purple "
            f"cytoplasm and dark nuclei on a mottled pink background; a small black square is outlined near "
            f"({x0 + bs // 2}, {y0 + bs // 2})."
        ),
        "objects": "cells",
        "obj": "cell",
        "box_name": "outlined square",
        "box_px": bs,
        "method": "threshold the dark-stained nuclei (exactly one per cell) and count connected components",
        "bright": False,
        "thr": 100,
        "min_area": 20,
        "noun": "nuclei detected",
        "note": lambda k: (
            f"{k} cells in the {bs}x{bs} px square is {k / bs**2 * 1e4:.1f} per 100x100 px; the "
            f"surrounding tissue averages {field_density:.1f} per 100x100 px."
        ),
    }
    return Scene(img, "count", question, str(n_in), inner, decoy, "", topic)



_ORGANISMS = (
    ("human", 46),
    ("dog", 78),
    ("cat", 38),
    ("fruit fly", 8),
    ("garden pea", 14),
    ("maize", 20),
    ("mouse", 40),
)


def decorative(rng: np.random.Generator) -> Scene:
    """The cell sketch: 2n is in the question; the answer is the chromosome count of a gamete."""
    org, n2 = pick(rng, _ORGANISMS)
    img, d = deco_canvas(rng, (255, 250, 240))
    W, H = img.size
    cx, cy, r = W // 2, H // 2 + 20, min(W, H) // 2 - 60
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(250, 215, 225), outline=(150, 60, 90), width=5)
    for j in range(4):
        x, y = cx - 90 + 60 * j, cy + (-30 if j % 2 else 30)
        d.line([(x - 18, y - 30), (x + 18, y + 30)], fill=(90, 30, 120), width=10)
        d.line([(x + 18, y - 30), (x - 18, y + 30)], fill=(90, 30, 120), width=10)
    box = text_box(d, (cx, cy - r + 60), f"2n = {n2}", get_font(44), (0, 0, 0), "mm")
    return Scene(
        img,
        "decorative",
        (
            f"A diploid {org} cell has 2n = {n2} chromosomes (sketch shown). How many "
            f"chromosomes does each gamete contain after meiosis?"
        ),
        str(n2 // 2),
        box,
        topic={
            "overview": f"The image is a small {W}x{H} cartoon of a cell with a few X-shaped chromosomes.",
            "label": f"2n = {n2}",
            "stated": f"The diploid number of the {org} (2n = {n2}) is given in the question.",
            "solution": (
                f"Meiosis halves the chromosome number, so each gamete is haploid with n = {n2}/2 = {n2 // 2} "
                f"chromosomes."
            ),
        },
    )
