"""Replay fidelity: does what the code really produces match what the trajectory recorded?

fidelity(cell) = min(text_fidelity, image_fidelity) over the parts the record has, where
  text_fidelity  = share of recorded numbers reproduced by the replay (rel. tol. 1e-3), or the
                   difflib similarity of the whitespace-normalised texts when the record has no numbers;
  image_fidelity = (1/max(n_rec, n_rep)) * sum over aligned pairs of SSIM(recorded, replayed)
                   on 256-px greyscale thumbnails (identical bytes count 1.0).
None when the record holds no observation for the cell (nothing to compare).
"""

from __future__ import annotations

import difflib
import io
import re

import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
THUMB = 256


def numbers_in(text: str | None) -> list[float]:
    """Every number written in a text, in order."""
    if not text:
        return []
    out = []
    for m in _NUMBER.finditer(text):
        try:
            out.append(float(m.group()))
        except ValueError:
            continue
    return out


def number_present(x: float, pool: list[float], rel_tol: float = 1e-3) -> bool:
    """True when ``x`` equals some number of ``pool`` within a relative tolerance."""
    return any(abs(x - y) <= rel_tol * max(abs(x), abs(y), 1e-9) for y in pool)


def text_fidelity(recorded: str | None, replayed: str | None) -> float | None:
    if not recorded or not recorded.strip():
        return None
    rec_numbers = numbers_in(recorded)
    if rec_numbers:
        rep_numbers = numbers_in(replayed)
        return sum(number_present(x, rep_numbers) for x in rec_numbers) / len(rec_numbers)
    a = " ".join(recorded.split())
    b = " ".join((replayed or "").split())
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def thumbnail_gray(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode image bytes to a greyscale float array, fitted in THUMB px (or resized to ``size``)."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("L")
        if size is None:
            im.thumbnail((THUMB, THUMB), Image.Resampling.BILINEAR)
        else:
            im = im.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.float64)


def image_similarity(a: bytes, b: bytes) -> float:
    """SSIM of two encoded images on greyscale thumbnails of the same size; 1.0 for equal bytes."""
    if a == b:
        return 1.0
    ta = thumbnail_gray(a)
    tb = thumbnail_gray(b, size=(ta.shape[1], ta.shape[0]))
    if min(ta.shape) < 7:
        return float(1.0 - np.mean(np.abs(ta - tb)) / 255.0)
    return float(max(0.0, structural_similarity(ta, tb, data_range=255.0)))


def images_fidelity(recorded: list[bytes], replayed: list[bytes]) -> float | None:
    if not recorded:
        return None
    total = sum(image_similarity(r, p) for r, p in zip(recorded, replayed, strict=False))
    return total / max(len(recorded), len(replayed))


def cell_fidelity(
    recorded_text: str | None,
    recorded_images: list[bytes],
    replayed_text: str | None,
    replayed_images: list[bytes],
) -> float | None:
    parts = [
        p
        for p in (
            text_fidelity(recorded_text, replayed_text),
            images_fidelity(recorded_images, replayed_images),
        )
        if p is not None
    ]
    return min(parts) if parts else None
