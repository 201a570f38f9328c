"""Real test images drawn on the fly (PNG bytes), shared by the tests."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont


def png(arr_or_img) -> bytes:
    im = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def detailed_page(size: int = 3000, seed: int = 0) -> np.ndarray:
    """A large greyscale page of circles with one tiny label at (1510, 1510)."""
    rng = np.random.default_rng(seed)
    im = Image.new("L", (size, size), 235)
    d = ImageDraw.Draw(im)
    for _ in range(40):
        x, y = (int(v) for v in rng.integers(0, size - 100, 2))
        d.ellipse([x, y, x + 80, y + 80], outline=40, width=4)
    d.text((1510, 1510), "AB = 37.5 cm  x=12", fill=0, font=ImageFont.load_default(size=12))
    return np.asarray(im)


def simple_sketch() -> np.ndarray:
    """A small sketch with big shapes and big text: fully legible at any budget."""
    im = Image.new("L", (640, 480), 255)
    d = ImageDraw.Draw(im)
    d.rectangle([100, 100, 400, 300], outline=0, width=6)
    d.text((150, 180), "BALL", fill=0, font=ImageFont.load_default(size=40))
    return np.asarray(im)


def zoom(arr: np.ndarray, x0: int, y0: int, x1: int, y1: int, factor: float) -> np.ndarray:
    return cv2.resize(arr[y0:y1, x0:x1], None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
