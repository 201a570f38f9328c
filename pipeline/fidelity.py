"""Replay fidelity: does what the code really produces match what the trajectory recorded?

A recorded observation differs from a replay in ways a person accepts (the tool enforced a minimum
box or clamped an out-of-range one, resized or JPEG-re-encoded the result, another matplotlib drew
the plot at another DPI, with or without a tight bounding box) and in ways that show fabrication (a
value edited, another region or image, numbers the code never printed). The rule:

fidelity(cell) = min(text_fidelity, image_fidelity) over the parts the record has; None when the
record holds no observation for the cell (nothing to compare).

text_fidelity(recorded, replayed):
  * The replay raised an exception (its text holds a Python traceback; or ``replayed_error`` is
    given) and the record shows an error (a traceback, an ``Execution error``/``Error:``/
    ``ERROR:`` line, Thyme's ``Sandbox for ...`` failure text or an ``XxxError:`` line):
    0 when the replay's exception type (last dotted component, e.g. ``NetworkXUnbounded``) is not
    named in the record, else the similarity of the replay's exception message to the best
    matching recorded line (difflib ratio after masking file paths and hex addresses; 1.0 when the
    message occurs verbatim). Line numbers and another machine's paths in the recorded traceback
    do not count: a reproduced error is faithful.
  * Otherwise the share of recorded numbers the replay printed (relative tolerance 1e-3), or the
    difflib similarity of the whitespace-normalised texts when the record has no numbers. When the
    replay raised but the record shows success, the result is capped at 0.5 (the record hides an
    error).

image_fidelity: the n-th recorded image is compared with the n-th replayed one, the sum divided by
max(n_recorded, n_replayed) (a missing image counts 0). Identical bytes score 1.0. Otherwise both
are decoded to grey levels in [0, 1] (longest side capped at WORK_MAX px), and:
 1. Trim: uniform borders (every pixel of a 3x3-smoothed copy within 0.03 of the border's median
    grey: PIL's black padding of an out-of-range box, a plot's white margin) are removed.
 2. Register. Same region (one image resized onto the other, aspect may change), tried on the
    trimmed and untrimmed images; if none scores >= EARLY_ACCEPT, containment: the recorded image
    inside the replayed one and the replayed inside the recorded one, searched on the untrimmed
    images (a trimmed image could hide a missing part) by normalised cross-correlation on a coarse
    copy (longest side COARSE px; windows of uniform grey never match) over scales from "fills the
    other image" down to a quarter of its side (a minimum-box widening or a clamped box; smaller
    overlaps are not accepted), refined on a finer copy (REFINE px, scale +-5 %); the two best are
    verified.
 3. Verify at the lower of the two native resolutions of the common region (upsampled to >=
    MIN_VERIFY px, capped at WORK_MAX): both blurred (sigma 0.8 px) at <= VERIFY_MAX px,
    ``rho`` = Pearson correlation of the two aligned images (1.0 when both are blank and agree);
    the replay's grey levels are then fitted to the record's by a positive gain and offset (a
    colormap), each TILE-px tile of the replay is shifted by up to 2 % of the side to its best
    match (re-rendered plots move text by a few pixels; an edited digit, a moved data point or an
    inverted patch cannot be shifted away), and
    ``local`` = the largest mean, over any LOCAL_WINDOW-px window, of the symmetric tolerant
    difference max(0, a - max3x3(b), min3x3(b) - a) (and with a and b swapped); when the common
    size exceeds VERIFY_MAX it is measured again at full size with the same (scaled) tile shifts.
    A local maximum, not a mean: a changed label is small.
 4. image_similarity = max over hypotheses of min(s_rho, s_local), with
    s_rho   = clip(1 - 0.2 * (1 - rho) / (1 - RHO_CRIT), 0, 1)      (0.8 at rho = RHO_CRIT)
    s_local = clip(1 - 0.2 * local / LOCAL_CRIT, 0, 1)             (0.8 at local = LOCAL_CRIT)
    so 0.8 (judges.code_correctness.FABRICATION_FIDELITY) is the boundary between accepted and
    fabricated. The thresholds were set between the legitimate and fabricated pairs of
    tests/test_fidelity.py (the table and its margin are printed by that test and in the README).
Cost (idle core, decode included): 3-25 ms for zoom crops, 40-90 ms for 1-2 MP pairs, up to ~160 ms
for re-rendered plots (several hypotheses verified).
"""

from __future__ import annotations

import difflib
import io
import re
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")

WORK_MAX = 1280
COARSE = 128
REFINE = 320
VERIFY_MAX = 640
TILE = 32
LOCAL_WINDOW = 9
MIN_VERIFY = 256
EARLY_ACCEPT = 0.95
MIN_CONTAINED_SIDE = 0.25  # the contained image spans >= 1/4 of the container's side
RHO_CRIT = 0.75
LOCAL_CRIT = 0.10
TRIM_TOL = 0.03


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


# --- text -----------------------------------------------------------------------------------
_TRACEBACK = "Traceback (most recent call last)"
_RECORDED_ERROR = re.compile(
    r"Traceback \(most recent call last\)|^\s*(?:OBSERVATION:\s*)?Execution error|^\s*(?:Error|ERROR):"
    r"|^\s*Sandbox for\b|^\s*(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception)\b\s*(?::|$)",
    re.MULTILINE,
)
_EXC_LINE = re.compile(r"^((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*)(?::\s?(.*))?$")
_PATHS = re.compile(r"(?:[A-Za-z]:)?(?:~|\.{1,2})?(?:[/\\][\w.\-~]+)+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")


def recorded_is_error(text: str | None) -> bool:
    """True when a recorded observation reports a failed cell."""
    return bool(text) and _RECORDED_ERROR.search(text) is not None


def replay_exception(text: str | None) -> tuple[str, str] | None:
    """(type, message) of the last Python traceback in a replayed text, else None."""
    if not text or _TRACEBACK not in text:
        return None
    tail = text[text.rindex(_TRACEBACK):].splitlines()[1:]
    for line in tail:
        if not line or line[0].isspace():
            continue
        m = _EXC_LINE.match(line.rstrip())
        if m:
            msg_start = tail.index(line)
            rest = [ln for ln in tail[msg_start + 1:] if ln.strip() and not ln.startswith("[traceback")]
            message = " ".join([m.group(2) or "", *rest]).strip()
            return m.group(1).rsplit(".", 1)[-1], message
    return None


def _mask(text: str) -> str:
    return " ".join(_HEX.sub("0x", _PATHS.sub("<path>", text)).split())


def error_fidelity(recorded: str, exc_type: str, exc_message: str) -> float:
    """How well a recorded error text matches the exception the replay raised (see module doc)."""
    if not re.search(rf"(?<![\w]){re.escape(exc_type)}(?![\w])", recorded):
        return 0.0
    msg = _mask(exc_message)
    if not msg:
        return 1.0
    rec = _mask(recorded)
    if msg in rec:
        return 1.0
    best = 0.0
    for line in recorded.splitlines():
        line = _mask(line)
        if not line:
            continue
        # compare with the line's text after the exception name, when it names one
        k = line.find(exc_type)
        cand = line[k + len(exc_type):].lstrip(": ") if k >= 0 else line
        for c in {cand, line}:
            best = max(best, difflib.SequenceMatcher(None, msg, c, autojunk=False).ratio())
    return round(best, 4)


def text_fidelity(recorded: str | None, replayed: str | None, replayed_error: str | None = None) -> float | None:
    if not recorded or not recorded.strip():
        return None
    exc = replay_exception(replayed_error) or replay_exception(replayed)
    if exc is not None and recorded_is_error(recorded):
        return error_fidelity(recorded, *exc)
    rec_numbers = numbers_in(recorded)
    if rec_numbers:
        rep_numbers = numbers_in(replayed)
        score = sum(number_present(x, rep_numbers) for x in rec_numbers) / len(rec_numbers)
    else:
        a = " ".join(recorded.split())
        b = " ".join((replayed or "").split())
        score = difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
    return min(score, 0.5) if exc is not None else score


# --- images ---------------------------------------------------------------------------------
def decode_gray(data: bytes, max_side: int = WORK_MAX) -> np.ndarray:
    """Encoded image -> float32 grey levels in [0, 1], longest side capped at ``max_side``."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if arr is None:  # formats OpenCV cannot read (GIF, ...)
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("L"))
    g = arr.astype(np.float32) / (65535.0 if arr.dtype == np.uint16 else 255.0)
    return _fit(g, max_side)


def _fit(g: np.ndarray, max_side: int) -> np.ndarray:
    h, w = g.shape
    if max(h, w) <= max_side:
        return g
    f = max_side / max(h, w)
    return cv2.resize(g, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def trim(g: np.ndarray, tol: float = TRIM_TOL) -> np.ndarray:
    """Remove uniform borders (every pixel within ``tol`` of the border's median grey, on a 3x3-smoothed
    copy); unchanged when almost nothing would be left."""
    h, w = g.shape
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    bg = float(np.median(border))
    mask = np.abs(cv2.blur(g, (3, 3)) - bg) > tol
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if rows.size == 0 or cols.size == 0:
        return g
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    if (y1 - y0) < 8 or (x1 - x0) < 8:
        return g
    return g[y0:y1, x0:x1]


def _resize(g: np.ndarray, w: int, h: int) -> np.ndarray:
    w, h = max(1, int(round(w))), max(1, int(round(h)))
    if (h, w) == g.shape:
        return g
    shrink = w < g.shape[1] or h < g.shape[0]
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


@dataclass
class _Hyp:
    """``small`` (all of it) shows region (x, y, w, h) of ``big`` (native px); ``swap``: small is b."""

    x: float
    y: float
    w: float
    h: float
    swap: bool
    corr: float


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = float(a.std()), float(b.std())
    if sa < 1e-3 or sb < 1e-3:
        return 1.0 if (sa < 1e-3 and sb < 1e-3 and abs(float(a.mean()) - float(b.mean())) < 0.1) else 0.0
    return float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb))


def _ncc(img: np.ndarray, t: np.ndarray) -> np.ndarray:
    """TM_CCOEFF_NORMED, with windows of (almost) uniform grey set to -1 (OpenCV reports 1 there)."""
    res = cv2.matchTemplate(img, t, cv2.TM_CCOEFF_NORMED)
    th, tw = t.shape
    ones = np.ones((th, tw), np.float32)
    s1 = cv2.matchTemplate(img, ones, cv2.TM_CCORR)
    s2 = cv2.matchTemplate(img * img, ones, cv2.TM_CCORR)
    var = s2 / ones.size - (s1 / ones.size) ** 2
    res[var < 1e-5] = -1.0
    return np.nan_to_num(res, nan=-1.0, posinf=-1.0, neginf=-1.0)


def _search(small: np.ndarray, big: np.ndarray, swap: bool) -> list[_Hyp]:
    """Coarse multi-scale search of ``small`` inside ``big``; the best hypotheses, refined."""
    bh, bw = big.shape
    sh, sw = small.shape
    c = min(1.0, COARSE / max(bh, bw))
    big_c = _resize(big, bw * c, bh * c)
    s_max = min(bw / sw, bh / sh)  # small scaled by s_max fills big along one side
    k = min(1.0, s_max * c * 1.5)
    small_c = _resize(small, sw * k, sh * k)  # resized once; templates are cut from this copy
    found: list[tuple[float, float, float, float]] = []
    s = s_max
    while s >= s_max * MIN_CONTAINED_SIDE:
        tw, th = sw * s * c, sh * s * c
        if min(tw, th) < 6:
            break
        t = _resize(small_c, tw, th)
        if t.shape[0] <= big_c.shape[0] and t.shape[1] <= big_c.shape[1] and float(t.std()) > 1e-3:
            _, mx, _, loc = cv2.minMaxLoc(_ncc(big_c, t))
            found.append((mx, s, loc[0] / c, loc[1] / c))
        s /= 1.08
    found.sort(reverse=True)
    out = []
    for mx, s, x, y in found[:2]:
        out.append(_refine(small, big, s, x, y, swap, mx))
    return out


def _refine(small: np.ndarray, big: np.ndarray, s: float, x: float, y: float, swap: bool, corr: float) -> _Hyp:
    """Refine scale and offset of ``small`` in ``big`` on a finer copy (scale ± 5 %)."""
    bh, bw = big.shape
    sh, sw = small.shape
    r = min(1.0, REFINE / max(bh, bw))
    big_r = _resize(big, bw * r, bh * r)
    margin = max(4, 0.04 * max(big_r.shape))
    k0 = min(1.0, s * r * 1.2)
    small_r = _resize(small, sw * k0, sh * k0)
    best = _Hyp(x, y, sw * s, sh * s, swap, corr)
    best_score = -2.0
    for k in np.linspace(-0.05, 0.05, 11):
        sk = s * (1 + k)
        tw, th = sw * sk * r, sh * sk * r
        if tw < 6 or th < 6:
            continue
        t = _resize(small_r, tw, th)
        if float(t.std()) <= 1e-3:
            continue
        x0 = int(max(0, x * r - margin))
        y0 = int(max(0, y * r - margin))
        x1 = int(min(big_r.shape[1], x * r + t.shape[1] + margin))
        y1 = int(min(big_r.shape[0], y * r + t.shape[0] + margin))
        win = big_r[y0:y1, x0:x1]
        if win.shape[0] < t.shape[0] or win.shape[1] < t.shape[1]:
            continue
        _, mx, _, loc = cv2.minMaxLoc(_ncc(win, t))
        if mx > best_score:
            best_score = mx
            best = _Hyp((x0 + loc[0]) / r, (y0 + loc[1]) / r, t.shape[1] / r, t.shape[0] / r, swap, mx)
    return best


def _tolerant_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    k = np.ones((3, 3), np.uint8)
    bmax, bmin = cv2.dilate(b, k), cv2.erode(b, k)
    amax, amin = cv2.dilate(a, k), cv2.erode(a, k)
    d1 = np.maximum(np.maximum(a - bmax, bmin - a), 0)
    d2 = np.maximum(np.maximum(b - amax, amin - b), 0)
    return np.maximum(d1, d2)


def _tile_shifts(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """Per TILE-px tile of ``a``, the shift (dy, dx), |d| <= 2 % of the side, that best fits ``b``."""
    h, w = a.shape
    m = max(2, int(round(0.02 * max(h, w))))
    bp = cv2.copyMakeBorder(b, m, m, m, m, cv2.BORDER_REPLICATE)
    shifts = np.zeros(((h + TILE - 1) // TILE, (w + TILE - 1) // TILE, 2), np.int32)
    for i, y in enumerate(range(0, h, TILE)):
        for j, x in enumerate(range(0, w, TILE)):
            ta = a[y: y + TILE, x: x + TILE]
            th, tw = ta.shape
            res = cv2.matchTemplate(bp[y: y + th + 2 * m, x: x + tw + 2 * m], ta, cv2.TM_SQDIFF)
            res[m, m] -= 1e-6  # prefer no shift on ties (flat tiles)
            _, _, loc, _ = cv2.minMaxLoc(res)
            shifts[i, j] = (loc[1] - m, loc[0] - m)
    return shifts, m


def _apply_shifts(b: np.ndarray, shifts: np.ndarray, tile: int, m: int) -> np.ndarray:
    h, w = b.shape
    bp = cv2.copyMakeBorder(b, m, m, m, m, cv2.BORDER_REPLICATE)
    out = np.empty_like(b)
    for i, y in enumerate(range(0, h, tile)):
        for j, x in enumerate(range(0, w, tile)):
            dy, dx = (int(v) for v in shifts[min(i, shifts.shape[0] - 1), min(j, shifts.shape[1] - 1)])
            th, tw = min(tile, h - y), min(tile, w - x)
            out[y: y + th, x: x + tw] = bp[y + m + dy: y + m + dy + th, x + m + dx: x + m + dx + tw]
    return out


def _photometric(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``b`` mapped to ``a``'s grey levels by a least-squares gain (> 0) and offset (a colormap)."""
    sb = float(b.std())
    if sb < 1e-3:
        return b
    gain = float(((a - a.mean()) * (b - b.mean())).mean()) / (sb * sb)
    if gain <= 0.2 or gain > 5:
        return b
    return (b - b.mean()) * gain + a.mean()


def _local(a: np.ndarray, b: np.ndarray) -> float:
    d = _tolerant_diff(a, b)
    win = min(LOCAL_WINDOW, *a.shape)
    return float(cv2.blur(d, (win, win)).max())


def compare_aligned(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(rho, local) of two aligned same-size grey images (see module doc). Local differences are
    measured at VERIFY_MAX px with tile shifts, and again at full size with the same shifts."""
    h, w = a.shape
    f = min(1.0, VERIFY_MAX / max(h, w))
    al, bl = (_resize(a, w * f, h * f), _resize(b, w * f, h * f)) if f < 1 else (a, b)
    al = cv2.GaussianBlur(al, (0, 0), 0.8)
    bl = cv2.GaussianBlur(bl, (0, 0), 0.8)
    rho = _corr(al, bl)
    if min(al.shape) < 4:
        return rho, float(np.abs(al - bl).mean())
    bl = _photometric(al, bl)
    shifts, m = _tile_shifts(al, bl)
    local = _local(al, _apply_shifts(bl, shifts, TILE, m))
    if f < 0.9:  # full size: the same tile shifts, scaled
        k = 1 / f
        ah = cv2.GaussianBlur(a, (0, 0), 0.5)
        bh = _photometric(ah, cv2.GaussianBlur(b, (0, 0), 0.5))
        full_shifts = np.round(shifts * k).astype(np.int32)
        local = max(local, _local(ah, _apply_shifts(bh, full_shifts, int(round(TILE * k)), int(np.ceil(m * k)))))
    return rho, local


def _score(rho: float, local: float) -> float:
    s_rho = 1 - 0.2 * (1 - rho) / (1 - RHO_CRIT)
    s_local = 1 - 0.2 * local / LOCAL_CRIT
    return float(np.clip(min(s_rho, s_local), 0.0, 1.0))


def _common(w: float, h: float) -> tuple[float, float]:
    """Comparison size: the lower native resolution, upsampled to >= MIN_VERIFY px, <= WORK_MAX."""
    f = max(1.0, MIN_VERIFY / max(w, h))
    f = min(f, WORK_MAX / max(w, h))
    return w * f, h * f


def _verify(a: np.ndarray, b: np.ndarray, hyp: _Hyp | None) -> tuple[float, float, float]:
    """Cut both images to the hypothesised common region at a common size; (score, rho, local)."""
    if hyp is None:  # same region, aspect may differ
        w, h = _common(min(a.shape[1], b.shape[1]), min(a.shape[0], b.shape[0]))
        A, B = _resize(a, w, h), _resize(b, w, h)
    else:
        small, big = (b, a) if hyp.swap else (a, b)
        x0, y0 = max(0, int(round(hyp.x))), max(0, int(round(hyp.y)))
        x1 = min(big.shape[1], int(round(hyp.x + hyp.w)))
        y1 = min(big.shape[0], int(round(hyp.y + hyp.h)))
        region = big[y0:y1, x0:x1]
        if region.size == 0:
            return 0.0, 0.0, 1.0
        w, h = _common(min(small.shape[1], region.shape[1]), min(small.shape[0], region.shape[0]))
        S, R = _resize(small, w, h), _resize(region, w, h)
        A, B = (R, S) if hyp.swap else (S, R)
    rho, local = compare_aligned(A, B)
    return _score(rho, local), rho, local


def image_match(a_bytes: bytes, b_bytes: bytes) -> dict:
    """Score and details of recorded image ``a_bytes`` against replayed ``b_bytes``."""
    if a_bytes == b_bytes:
        return {"score": 1.0, "how": "identical", "rho": 1.0, "local": 0.0}
    a_full, b_full = decode_gray(a_bytes), decode_gray(b_bytes)
    a, b = trim(a_full), trim(b_full)
    best = {"score": -1.0}

    def consider(x: np.ndarray, y: np.ndarray, hyp: _Hyp | None) -> None:
        nonlocal best
        score, rho, local = _verify(x, y, hyp)
        if score > best["score"]:
            how = "same region" if hyp is None else ("replayed inside recorded" if hyp.swap else "recorded inside replayed")
            best = {"score": score, "how": how, "rho": rho, "local": local}

    # same region: trimmed (plot margins, padding) and as recorded
    pairs = [(a, b), (a_full, b_full), (a_full, b), (a, b_full)]
    for x, y in pairs[: 4 if (a.shape != a_full.shape or b.shape != b_full.shape) else 1]:
        consider(x, y, None)
        if best["score"] >= EARLY_ACCEPT:
            return best
    # containment, searched on the images as recorded (a trimmed image could hide a missing part)
    if float(a_full.std()) > 1e-3 and float(b_full.std()) > 1e-3:
        hyps = _search(a_full, b_full, swap=False) + _search(b_full, a_full, swap=True)
        for hyp in sorted(hyps, key=lambda h: -h.corr)[:2]:
            consider(a_full, b_full, hyp)
    return best


def image_similarity(a: bytes, b: bytes) -> float:
    """Fidelity of recorded image ``a`` to replayed image ``b`` in [0, 1] (see module doc)."""
    return float(image_match(a, b)["score"])


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
    *,
    replayed_error: str | None = None,
) -> float | None:
    """min(text_fidelity, image_fidelity) over the parts the record has (see module doc)."""
    parts = [
        p
        for p in (
            text_fidelity(recorded_text, replayed_text, replayed_error),
            images_fidelity(recorded_images, replayed_images),
        )
        if p is not None
    ]
    return min(parts) if parts else None
