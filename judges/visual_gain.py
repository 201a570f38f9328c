"""Visual information gain: how much detail an image operation shows that the model could not
already see in the original at its input pixel budget.

The target model sees an image of W×H pixels scaled by s(W, H) = min(1, sqrt(B / (W·H))) with
B = visual_tokens · patch_px² (default 1280 · 28² ≈ 1.0 MP, the common Qwen-VL budget).

For every image O (w×h) that the replay produced:
 1. Register O in each input image I by multi-scale normalised cross-correlation; when the
    best correlation is ≥ 0.6, O shows region R of I magnified by k = w / R_w.
 2. Zoom relative to what the model already saw: z = k · s(w, h) / s(W, H).
 3. Lost detail: L = 1 − SSIM(O', up(down(O', 1/z))) with O' = O at its own budget view, i.e.
    what of O would vanish at the resolution the model had for R. Upscaled crops of regions that
    were already legible are band-limited, so L ≈ 0; tiny text or fine structure gives large L.
 4. gain(O) = min(1, L / 0.25) when z > 1.05, else 0 (output ≈ input or shrunk).
 Unregistered outputs (edge maps, masks, plots) are transforms of the whole view:
    gain(O) = 0.5 · (1 − SSIM(O, I) on 256-px thumbnails)   (capped at 0.5: new rendering, no new pixels).
 Blank (grey-level std < 2) or tiny (< 28 px side) outputs score 0.
Trajectory gain = max over its produced images (one good zoom is what TwI is for); a sample with
code but no produced images scores 0, a sample without input images cannot be scored (None).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

from judges.base import Verdict
from schemas import sample as S

REGISTER_MIN_CORR = 0.6
FULL_GAIN_LOSS = 0.25
MIN_ZOOM = 1.05
MIN_SIDE = 28
THUMB_SIDE = 1024
MIN_TEMPLATE = 10
ZOOM_GRID = tuple(2 ** (i / 6) for i in range(-12, 25))  # 0.25x .. 16x


def budget_scale(width: int, height: int, budget_px: float) -> float:
    return min(1.0, math.sqrt(budget_px / max(1, width * height)))


def _gray(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"))


@dataclass(frozen=True)
class Registration:
    corr: float
    zoom_k: float  # output pixels per original pixel
    box: tuple[int, int, int, int]  # region of the original (x, y, w, h)


def register(original: np.ndarray, output: np.ndarray) -> Registration | None:
    """Find where ``output`` sits in ``original`` and at what magnification (None if nowhere)."""
    H, W = original.shape
    h, w = output.shape
    a = min(1.0, THUMB_SIDE / max(H, W))
    thumb = cv2.resize(original, (max(1, round(W * a)), max(1, round(H * a))), interpolation=cv2.INTER_AREA)
    best: Registration | None = None
    for k in ZOOM_GRID:
        tw, th = round(w * a / k), round(h * a / k)
        if min(tw, th) < MIN_TEMPLATE or tw > thumb.shape[1] or th > thumb.shape[0]:
            continue
        templ = cv2.resize(output, (tw, th), interpolation=cv2.INTER_AREA)
        if templ.std() < 1.0:
            continue
        res = cv2.matchTemplate(thumb, templ, cv2.TM_CCOEFF_NORMED)
        _, corr, _, loc = cv2.minMaxLoc(np.nan_to_num(res, nan=-1.0))
        if best is None or corr > best.corr:
            box = (round(loc[0] / a), round(loc[1] / a), round(w / k), round(h / k))
            best = Registration(float(corr), k, box)
    return best


def lost_detail(view: np.ndarray, zoom: float) -> float:
    """1 − SSIM between a view and the same view resampled down by ``zoom`` and back up."""
    h, w = view.shape
    dw, dh = max(1, round(w / zoom)), max(1, round(h / zoom))
    degraded = cv2.resize(cv2.resize(view, (dw, dh), interpolation=cv2.INTER_AREA), (w, h),
                          interpolation=cv2.INTER_CUBIC)
    if min(h, w) < 7:
        return 0.0
    return float(max(0.0, 1.0 - structural_similarity(view, degraded, data_range=255)))


def _fit(view: np.ndarray, budget_px: float) -> np.ndarray:
    h, w = view.shape
    s = budget_scale(w, h, budget_px)
    if s >= 1.0:
        return view
    return cv2.resize(view, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def image_gain(original: np.ndarray, output: np.ndarray, budget_px: float) -> tuple[float, str]:
    """Gain of one produced image against one input image, with the reason."""
    h, w = output.shape
    if min(h, w) < MIN_SIDE:
        return 0.0, f"output {w}x{h} too small"
    if output.std() < 2.0:
        return 0.0, "output blank"
    H, W = original.shape
    reg = register(original, output)
    if reg is None or reg.corr < REGISTER_MIN_CORR:
        a = cv2.resize(original, (256, 256), interpolation=cv2.INTER_AREA)
        b = cv2.resize(output, (256, 256), interpolation=cv2.INTER_AREA)
        change = 1.0 - max(0.0, structural_similarity(a, b, data_range=255))
        return 0.5 * change, f"transform (not a region of the input), change {change:.2f}"
    zoom = reg.zoom_k * budget_scale(w, h, budget_px) / budget_scale(W, H, budget_px)
    if zoom <= MIN_ZOOM:
        return 0.0, f"region {reg.box[2]}x{reg.box[3]} at zoom {zoom:.2f}: nothing finer than the input view"
    loss = lost_detail(_fit(output, budget_px), zoom)
    gain = min(1.0, loss / FULL_GAIN_LOSS)
    return gain, f"region {reg.box[2]}x{reg.box[3]} zoom {zoom:.1f}x reveals detail {loss:.2f}"


class VisualGainJudge:
    name = "metric/visual_gain"
    dimension = "visual_gain"
    needs = (S.IMAGES, S.REPLAY)

    def __init__(self, visual_tokens: int = 1280, patch_px: int = 28):
        self.budget_px = float(visual_tokens * patch_px * patch_px)

    def judge(self, row: dict[str, Any]) -> Verdict:
        inputs = row.get(S.IMAGES) or []
        cells = row.get(S.REPLAY) or []
        if not inputs:
            return Verdict(None, "no input image")
        produced = [img for c in cells for img in (c[S.CELL_IMAGES] or [])]
        if not produced:
            return Verdict(0.0, "no image produced by the replay" if cells else "no code cells")
        originals = [_gray(i[S.IMG_BYTES]) for i in inputs]
        best, best_why = 0.0, ""
        for img in produced:
            out = _gray(img[S.IMG_BYTES])
            for orig in originals:
                gain, why = image_gain(orig, out, self.budget_px)
                if gain > best or not best_why:
                    best, best_why = gain, f"{img[S.IMG_NAME]}: {why}"
        return Verdict(round(best, 4), f"max over {len(produced)} produced image(s): {best_why}")
