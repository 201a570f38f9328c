"""Visual information gain: how much detail an image operation shows that the model could not
already see in the original at its input pixel budget.

The target model sees an image of W×H pixels scaled by s(W, H) = min(1, sqrt(B / (W·H))) with
B = visual_tokens · patch_px² (default 1280 · 28² ≈ 1.0 MP, the common Qwen-VL budget).

For every image O (w×h) that the replay produced:
 1. Register O in each input image I by multi-scale normalised cross-correlation; when the
    best correlation is ≥ 0.6, O shows region R of I magnified by k = w / R_w.
 2. Zoom relative to what the model already saw: z = k · s(w, h) / s(W, H).
 3. Lost detail: L = Σ(O' − up(down(O', 1/z)))² / Σ(O' − mean O')² with O' = O at its own budget
    view: the share of O's contrast energy that would vanish at the resolution the model had for R.
    Upscaled crops of regions that were already legible are band-limited, so L ≈ 0; tiny text or
    fine structure gives a large L.
 4. gain(O) = min(1, L / 0.2) when z > 1.05, else 0 (output ≈ input or shrunk).
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
FULL_GAIN_LOSS = 0.2
MIN_ZOOM = 1.05
MIN_SIDE = 28
THUMB_SIDE = 1024
MIN_TEMPLATE = 10
COARSE_SIDE = 512
ZOOM_GRID = tuple(2 ** (i / 8) for i in range(-16, 33))  # 0.25x .. 16x


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


def _match(thumb: np.ndarray, output: np.ndarray, a: float, k: float) -> Registration | None:
    h, w = output.shape
    tw, th = round(w * a / k), round(h * a / k)
    if min(tw, th) < MIN_TEMPLATE or tw > thumb.shape[1] or th > thumb.shape[0]:
        return None
    templ = cv2.GaussianBlur(cv2.resize(output, (tw, th), interpolation=cv2.INTER_AREA), (0, 0), 1.0)
    if templ.std() < 1.0:
        return None
    res = cv2.matchTemplate(thumb, templ, cv2.TM_CCOEFF_NORMED)
    # Flat windows make the normalised correlation degenerate (OpenCV reports 1.0): exclude them.
    t = thumb.astype(np.float32)
    mean = cv2.boxFilter(t, -1, (tw, th), normalize=True, borderType=cv2.BORDER_ISOLATED)
    sq = cv2.boxFilter(t * t, -1, (tw, th), normalize=True, borderType=cv2.BORDER_ISOLATED)
    x0, y0 = tw // 2, th // 2
    var = (sq - mean * mean)[y0 : y0 + res.shape[0], x0 : x0 + res.shape[1]]
    res = np.where(var > 1.0, np.nan_to_num(res, nan=-1.0, posinf=-1.0, neginf=-1.0), -1.0)
    _, corr, _, loc = cv2.minMaxLoc(res)
    return Registration(float(corr), k, (round(loc[0] / a), round(loc[1] / a), round(w / k), round(h / k)))


def _thumb(original: np.ndarray, side: int, sigma: float) -> tuple[np.ndarray, float]:
    H, W = original.shape
    a = min(1.0, side / max(H, W))
    t = cv2.resize(original, (max(1, round(W * a)), max(1, round(H * a))), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(t, (0, 0), sigma), a


def register(original: np.ndarray, output: np.ndarray) -> Registration | None:
    """Find where ``output`` sits in ``original`` and at what magnification (None if nowhere).

    Coarse search on a 512-px thumbnail over ZOOM_GRID (steps of 2^(1/8)) plus the scales of
    common whole-image resizes, then a fine search on a 1024-px thumbnail (steps of 2^(1/64))
    around the best coarse scale. Both sides are blurred so resampling artefacts do not matter.
    """
    H, W = original.shape
    h, w = output.shape
    coarse, a = _thumb(original, COARSE_SIDE, 1.5)
    scales = sorted({*ZOOM_GRID, w / W, h / H, *(f for f in (2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 1 / 2, 1 / 3, 1 / 4))})
    candidates = [r for k in scales if (r := _match(coarse, output, a, k)) is not None]
    if not candidates:
        return None
    best = max(candidates, key=lambda r: r.corr)
    fine_thumb, a = _thumb(original, THUMB_SIDE, 1.0)
    fine = [best.zoom_k * 2 ** (i / 64) for i in range(-8, 9)]
    candidates = [r for k in fine if (r := _match(fine_thumb, output, a, k)) is not None]
    return max(candidates, key=lambda r: r.corr) if candidates else best


def lost_detail(view: np.ndarray, zoom: float) -> float:
    """Share of the view's contrast energy that resampling down by ``zoom`` and back up destroys:
    sum((V - up(down(V)))²) / sum((V - mean V)²), clipped to [0, 1]."""
    h, w = view.shape
    if min(h, w) < 7:
        return 0.0
    v = view.astype(np.float64)
    dw, dh = max(1, round(w / zoom)), max(1, round(h / zoom))
    degraded = cv2.resize(cv2.resize(v, (dw, dh), interpolation=cv2.INTER_AREA), (w, h),
                          interpolation=cv2.INTER_CUBIC)
    energy = float(np.sum((v - v.mean()) ** 2))
    if energy <= 0.0:
        return 0.0
    return min(1.0, float(np.sum((v - degraded) ** 2)) / energy)


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
