"""What the scenes and the trajectories share: the Scene record, deterministic PNG encoding,
fonts, box geometry, text placement and the small value helpers (formatting, misreadings)."""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels

_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})


def png_bytes(im: Image.Image) -> bytes:
    """Deterministic PNG encoding (no timestamps, default zlib level)."""
    if im.mode not in _PNG_MODES:
        im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=64)
def get_font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` px (the same glyphs on every machine)."""
    return ImageFont.load_default(size=size)  # type: ignore[return-value]


def _ibox(*vals: float) -> Box:
    x0, y0, x1, y1 = (int(round(float(v))) for v in vals)
    return (x0, y0, x1, y1)


def pad_box(box: Box, px: int, py: int, size: tuple[int, int]) -> Box:
    """``box`` grown by px/py on each side, clipped to an image of ``size``."""
    W, H = size
    return _ibox(max(0, box[0] - px), max(0, box[1] - py), min(W, box[2] + px), min(H, box[3] + py))


def same_size_box(view: Box, center: tuple[float, float], size: tuple[int, int]) -> Box:
    """A box of view's size centred on center, shifted to stay inside the image."""
    W, H = size
    w, h = view[2] - view[0], view[3] - view[1]
    x0 = int(min(max(0, round(center[0] - w / 2)), W - w))
    y0 = int(min(max(0, round(center[1] - h / 2)), H - h))
    return (x0, y0, x0 + w, y0 + h)


def decoy_box(rng: np.random.Generator, view: Box, size: tuple[int, int], corner: tuple[int, int], bs: int) -> Box:
    """A box of view's size centred at a random point at least 3 box sides from the bs-sided box
    at ``corner``: a same-size region that shows nothing of interest."""
    W, H = size
    for _ in range(10_000):
        cx, cy = float(rng.uniform(bs, W - bs)), float(rng.uniform(bs, H - bs))
        if math.hypot(cx - corner[0] - bs / 2, cy - corner[1] - bs / 2) > 3 * bs:
            return same_size_box(view, (cx, cy), size)
    # a box too large for its image has no point that far: take the point farthest from it (some
    # scenes of larger corpora drew such boxes and this loop never ended)
    far = max(((bs, bs), (W - bs, bs), (bs, H - bs), (W - bs, H - bs)),
              key=lambda p: math.hypot(p[0] - corner[0] - bs / 2, p[1] - corner[1] - bs / 2))
    return same_size_box(view, (float(far[0]), float(far[1])), size)


def box_center(box: Box) -> tuple[float, float]:
    """The centre of ``box``."""
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def fmt_num(x: float) -> str:
    """A number as printed in questions and sketches (no trailing zeros, no float noise)."""
    return f"{x:.10g}"


# A look-alike of each digit (what a misreading of a blurred digit turns it into).
_CONFUSE = {
    "0": "8",
    "1": "7",
    "2": "7",
    "3": "8",
    "4": "1",
    "5": "6",
    "6": "5",
    "7": "1",
    "8": "3",
    "9": "8",
}


def misread_value(value: str, rng: np.random.Generator) -> str:
    """A plausible misreading of a printed value: one digit swapped for a look-alike."""
    digits = [k for k, ch in enumerate(value) if ch.isdigit()]
    k = digits[int(rng.integers(len(digits)))]
    return value[:k] + _CONFUSE[value[k]] + value[k + 1 :]


# --- scenes --------------------------------------------------------------------------------
@dataclass
class Scene:
    """One drawn image with its question and the ground truth known by construction; ``topic``
    holds the discipline's phrases the trajectory's reasoning is written from."""

    image: Image.Image
    kind: str  # "label" | "count" | "decorative"
    question: str
    answer: str
    target: Box  # label: bbox of the annotation; count: interior of the marked box; decorative: label bbox
    decoy: Box = (0, 0, 0, 0)  # label: another annotation; count: a same-size region elsewhere
    decoy_value: str = ""
    topic: dict[str, Any] = field(default_factory=dict)


def pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    """One of ``options``, drawn with ``rng``."""
    return options[int(rng.integers(len(options)))]


def view_note(W: int, H: int) -> str:
    """How much a W x H image is downsampled to be viewed whole (about 1024 px), as prose."""
    factor = max(W, H) / 1024
    return f"roughly {factor:.0f}x"


def text_box(
    d: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: Any, fill: Any, anchor: str
) -> Box:
    """Draw ``text`` and return its bounding box (where a zoom has to look)."""
    d.text(xy, text, font=font, fill=fill, anchor=anchor)
    return _ibox(*d.textbbox(xy, text, font=font, anchor=anchor))


def inside(box: Box, x: float, y: float, margin: float = 0.0) -> bool:
    """Whether (x, y) lies in ``box`` grown by ``margin`` on every side."""
    return box[0] - margin <= x <= box[2] + margin and box[1] - margin <= y <= box[3] + margin


# Canvas sizes of the decorative sketches (small: the text alone answers their question).
_SMALL_SIZES = ((800, 600), (720, 540), (640, 480), (800, 500))


def deco_canvas(
    rng: np.random.Generator, bg: tuple[int, int, int]
) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A small blank canvas of a random size for a decorative sketch, and its drawing context."""
    img = Image.new("RGB", pick(rng, _SMALL_SIZES), bg)
    return img, ImageDraw.Draw(img)
