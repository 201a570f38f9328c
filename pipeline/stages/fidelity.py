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
max(n_recorded, n_replayed) (a missing image counts 0). Not counted at all (None) when the cell's
code draws with unseeded randomness (``unseeded_randomness``: a networkx ``spring_layout``/
``random_layout``/... without ``seed=``, a ``random.*``/``np.random.*`` draw or an unseeded
``default_rng()`` with no earlier ``seed(...)`` in the cell): such code cannot reproduce its recorded
picture, so a different picture is not fabrication; its text still counts. Identical bytes score 1.0.
Otherwise both are decoded to grey levels in [0, 1] (native copies kept up to NATIVE_MAX px; working
copies with the longest side capped at WORK_MAX px), and:
 1. Trim: uniform borders (every pixel of a 3x3-smoothed copy within 0.03 of the border's median
    grey: PIL's black padding of an out-of-range box, a plot's white margin) are removed.
 2. Register. Same region (one image resized onto the other, aspect may change), tried on the
    trimmed and untrimmed images; if none scores >= EARLY_ACCEPT and none correlates pixel for pixel
    (rho >= SAME_REGION_RHO: a difference is then of content, not of framing), containment: the
    recorded image inside the replayed one and the replayed inside the recorded one, searched on the
    untrimmed images (a trimmed image could hide a missing part) by normalised cross-correlation on a
    coarse copy (longest side COARSE px; windows of uniform grey never match) over scales from "fills
    the other image" down to a quarter of its side (a minimum-box widening or a clamped box; smaller
    overlaps are not accepted), refined on a finer copy (REFINE px, scale +-5 %); the two best are
    verified.
 3. Verify at the lower of the two resolutions of the common region (upsampled to >= MIN_VERIFY px,
    capped at WORK_MAX): both blurred (sigma 0.8 px) at <= VERIFY_MAX px, ``rho`` = Pearson
    correlation of the two aligned images (1.0 when both are blank and agree); the replay's grey
    levels are then fitted to the record's by a positive gain and offset (a colormap), each TILE-px
    tile of the replay is shifted by up to 2 % of the side to its best match (re-rendered plots move
    text by a few pixels; an edited digit, a moved data point or an inverted patch cannot be shifted
    away), and on the symmetric tolerant difference max(0, a - max3x3(b), min3x3(b) - a) (and with a
    and b swapped), ignoring a BORDER-px frame (resampling artefacts at a crop's edge):
    ``local``  = the largest mean over any LOCAL_WINDOW-px window (sigma 0.8 copies);
    ``strong`` = the same, counting only differences above STRONG_DIFF (sigma 0.5 copies): a
    re-render lightens a stroke or moves it by a pixel, an edit adds or removes one.
    When the common size exceeds VERIFY_MAX both are measured again at full size with the same
    (scaled) tile shifts. Local maxima, not means: a changed label is small.
 4. Same pixel grid: when the two regions' native sizes agree within SAME_GRID (or 2 px) -- a
    re-encode, the same render, a crop at the same zoom -- a plain difference is meaningful and a
    tolerant one misses a thin-stroke edit (7 -> 1 in a 14 px label). At native resolution (sigma
    0.5 copies, the replay's grey levels fitted as above) the replay is aligned by one integer offset
    (+-PLAIN_SEARCH px), and ``plain`` = the largest LOCAL_WINDOW-px window mean of |a - b| where it
    exceeds PLAIN_DIFF; the (up to PLAIN_CANDIDATES) windows above PLAIN_CRIT / 2 are re-measured
    after re-aligning their PLAIN_TILE-px tile on its own (+-1 px, quarter-pixel steps: a glyph drawn
    at another sub-pixel phase, as bbox_inches='tight' does). Regions of different sizes (a re-render
    at another DPI, a resize) keep only the tolerant measures of step 3.
 5. image_similarity = max over hypotheses of min(s_rho, s_local), with
    s_rho   = clip(1 - 0.2 * (1 - rho) / (1 - RHO_CRIT), 0, 1)                       (0.8 at rho = RHO_CRIT)
    s_local = clip(1 - 0.2 * max(local / LOCAL_CRIT, strong / STRONG_CRIT, plain / PLAIN_CRIT), 0, 1)
    so 0.8 (ACCEPT; judges.code_correctness.FABRICATION_FIDELITY) is the boundary between accepted
    and fabricated. A hypothesis whose rho is below RHO_CRIT (s_rho < 0.8) cannot be accepted
    whatever its local differences: its costly local measures are taken only when no hypothesis
    correlates better, and then only for the best-correlated one. A score >= 0.8 is therefore
    exactly the maximum above; below 0.8 it may be lower than that maximum (a clear mismatch is
    not measured six times: half the cost of fabricated pairs). The thresholds were set between the legitimate and fabricated pairs of
    tests/test_fidelity.py (the table and its margin are printed by that test and in the README).
Cost: see bench/fidelity.py (per pair kind, decode included).
"""

from __future__ import annotations

import ast
import difflib
import io
import re
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")

WORK_MAX = 1280
NATIVE_MAX = 4096
COARSE = 128
REFINE = 320
VERIFY_MAX = 640
TILE = 32
LOCAL_WINDOW = 9
MIN_VERIFY = 256
EARLY_ACCEPT = 0.95
ACCEPT = 0.8  # the boundary between faithful and fabricated (judges.code_correctness.FABRICATION_FIDELITY)
MIN_CONTAINED_SIDE = 0.25  # the contained image spans >= 1/4 of the container's side
RHO_CRIT = 0.75
LOCAL_CRIT = 0.13
STRONG_DIFF = 0.5
STRONG_CRIT = 0.045
BORDER = 2
SAME_REGION_RHO = 0.98
SAME_GRID = 0.005  # native sizes within 0.5 % (or 2 px): the same pixel grid
PLAIN_DIFF = 0.3
PLAIN_CRIT = 0.06
PLAIN_SEARCH = 3
PLAIN_TILE = 28
PLAIN_CANDIDATES = 8
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
def decode_gray(data: bytes, max_side: int = NATIVE_MAX) -> np.ndarray:
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


@dataclass
class _View:
    """``g`` (working copy, <= WORK_MAX px) shows the native pixels [x0, x0 + sx * width) x
    [y0, y0 + sy * height) of ``native``."""

    g: np.ndarray
    native: np.ndarray
    x0: float = 0.0
    y0: float = 0.0
    sx: float = 1.0
    sy: float = 1.0

    @classmethod
    def of(cls, native: np.ndarray) -> _View:
        g = _fit(native, WORK_MAX)
        return cls(g, native, 0.0, 0.0, native.shape[1] / g.shape[1], native.shape[0] / g.shape[0])

    def crop(self, x0: int, y0: int, x1: int, y1: int) -> _View:
        return _View(self.g[y0:y1, x0:x1], self.native, self.x0 + x0 * self.sx, self.y0 + y0 * self.sy,
                     self.sx, self.sy)


def _trim_box(g: np.ndarray, tol: float = TRIM_TOL) -> tuple[int, int, int, int]:
    h, w = g.shape
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    bg = float(np.median(border))
    mask = np.abs(cv2.blur(g, (3, 3)) - bg) > tol
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if rows.size == 0 or cols.size == 0:
        return 0, 0, w, h
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if (y1 - y0) < 8 or (x1 - x0) < 8:
        return 0, 0, w, h
    return x0, y0, x1, y1


def trim(g: np.ndarray, tol: float = TRIM_TOL) -> np.ndarray:
    """Remove uniform borders (every pixel within ``tol`` of the border's median grey, on a 3x3-smoothed
    copy); unchanged when almost nothing would be left."""
    x0, y0, x1, y1 = _trim_box(g, tol)
    return g[y0:y1, x0:x1]


def _resize(g: np.ndarray, w: float, h: float) -> np.ndarray:
    w, h = max(1, int(round(w))), max(1, int(round(h)))
    if (h, w) == g.shape:
        return g
    shrink = w < g.shape[1] or h < g.shape[0]
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


@dataclass
class _Hyp:
    """``small`` (all of it) shows region (x, y, w, h) of ``big`` (working px); ``swap``: small is b."""

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


Integrals = tuple[np.ndarray, np.ndarray]


def grey_std(g: np.ndarray) -> float:
    """Standard deviation of a grey image (one pass in OpenCV, no float64 copy: 10-30x numpy's
    ``std`` on the templates and images the searches test for flatness); 0.0 when empty."""
    if not g.size:
        return 0.0
    if g.dtype in (np.uint8, np.float32, np.float64):
        return float(cv2.meanStdDev(g)[1][0, 0])
    return float(g.std())  # a depth OpenCV's meanStdDev does not take (int64, bool)


def integrals(img: np.ndarray) -> Integrals:
    """Sum and squared-sum integral images of ``img`` (float64), for :func:`window_variance`."""
    return cv2.integral2(img, sdepth=cv2.CV_64F, sqdepth=cv2.CV_64F)


def window_variance(integ: Integrals, th: int, tw: int, y0: int = 0, x0: int = 0,
                    h: int | None = None, w: int | None = None) -> np.ndarray:
    """Grey-level variance of every ``th`` x ``tw`` window inside the region [y0, y0 + h) x
    [x0, x0 + w) of the image whose :func:`integrals` are ``integ`` (default: the whole image),
    indexed by the window's top-left corner: the shape of ``cv2.matchTemplate``'s result over that
    region. Four lookups per window whatever its size, so a search over many template sizes pays
    for the image's integrals once instead of two box filters (or correlations) per size."""
    s, sq = integ
    h = s.shape[0] - 1 - y0 if h is None else h
    w = s.shape[1] - 1 - x0 if w is None else w
    ny, nx = h - th + 1, w - tw + 1

    def sums(a: np.ndarray) -> np.ndarray:
        return (a[y0 + th:y0 + th + ny, x0 + tw:x0 + tw + nx] - a[y0:y0 + ny, x0 + tw:x0 + tw + nx]
                - a[y0 + th:y0 + th + ny, x0:x0 + nx] + a[y0:y0 + ny, x0:x0 + nx])

    n = float(th * tw)
    mean = sums(s) / n
    return sums(sq) / n - mean * mean


def _ncc(img: np.ndarray, t: np.ndarray, integ: Integrals | None = None, y0: int = 0, x0: int = 0) -> np.ndarray:
    """TM_CCOEFF_NORMED, with windows of (almost) uniform grey set to -1 (OpenCV reports 1 there).
    ``integ``: the :func:`integrals` of the image ``img`` was cut from at (y0, x0) (default: of
    ``img`` itself)."""
    res = cv2.matchTemplate(img, t, cv2.TM_CCOEFF_NORMED)
    th, tw = t.shape
    var = window_variance(integ if integ is not None else integrals(img), th, tw, y0, x0, *img.shape)
    res[var < 1e-5] = -1.0
    return np.nan_to_num(res, nan=-1.0, posinf=-1.0, neginf=-1.0)


def _coarse(small: np.ndarray, big: np.ndarray, swap: bool) -> list[tuple[float, float, float, float, bool]]:
    """Coarse multi-scale search of ``small`` inside ``big``: (correlation, scale, x, y, swap) of
    every scale tried, x and y in ``big``'s working pixels."""
    bh, bw = big.shape
    sh, sw = small.shape
    c = min(1.0, COARSE / max(bh, bw))
    big_c = _resize(big, bw * c, bh * c)
    s_max = min(bw / sw, bh / sh)  # small scaled by s_max fills big along one side
    k = min(1.0, s_max * c * 1.5)
    small_c = _resize(small, sw * k, sh * k)  # resized once; templates are cut from this copy
    found: list[tuple[float, float, float, float, bool]] = []
    big_i = integrals(big_c)
    s = s_max
    while s >= s_max * MIN_CONTAINED_SIDE:
        tw, th = sw * s * c, sh * s * c
        if min(tw, th) < 6:
            break
        t = _resize(small_c, tw, th)
        if t.shape[0] <= big_c.shape[0] and t.shape[1] <= big_c.shape[1] and grey_std(t) > 1e-3:
            _, mx, _, loc = cv2.minMaxLoc(_ncc(big_c, t, big_i))
            found.append((mx, s, loc[0] / c, loc[1] / c, swap))
        s /= 1.08
    return found


def _search(a: np.ndarray, b: np.ndarray, keep: int = 2) -> list[_Hyp]:
    """Containment hypotheses: ``a`` inside ``b`` and ``b`` inside ``a`` searched coarsely, the
    ``keep`` best-correlated of both directions refined (the refinement is the costly part)."""
    found = sorted(_coarse(a, b, swap=False) + _coarse(b, a, swap=True), reverse=True)
    return [_refine(b if swap else a, a if swap else b, s, x, y, swap, mx) for mx, s, x, y, swap in found[:keep]]


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
    big_i = integrals(big_r)
    for k in np.linspace(-0.05, 0.05, 11):
        sk = s * (1 + k)
        tw, th = sw * sk * r, sh * sk * r
        if tw < 6 or th < 6:
            continue
        t = _resize(small_r, tw, th)
        if grey_std(t) <= 1e-3:
            continue
        x0 = int(max(0, x * r - margin))
        y0 = int(max(0, y * r - margin))
        x1 = int(min(big_r.shape[1], x * r + t.shape[1] + margin))
        y1 = int(min(big_r.shape[0], y * r + t.shape[0] + margin))
        win = big_r[y0:y1, x0:x1]
        if win.shape[0] < t.shape[0] or win.shape[1] < t.shape[1]:
            continue
        _, mx, _, loc = cv2.minMaxLoc(_ncc(win, t, big_i, y0, x0))
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


def _photometric(a: np.ndarray, b: np.ndarray, apply_to: np.ndarray | None = None) -> np.ndarray:
    """``b`` mapped to ``a``'s grey levels by a least-squares gain (> 0) and offset (a colormap); the
    same mapping applied to ``apply_to`` when given."""
    out = b if apply_to is None else apply_to
    sb = float(b.std())
    if sb < 1e-3:
        return out
    gain = float(((a - a.mean()) * (b - b.mean())).mean()) / (sb * sb)
    if gain <= 0.2 or gain > 5:
        return out
    return (out - b.mean()) * gain + a.mean()


def _measure(a: np.ndarray, b: np.ndarray, border: int) -> tuple[float, float]:
    """(local, strong): the largest LOCAL_WINDOW-px window mean of the tolerant difference, and of its
    values above STRONG_DIFF, ignoring a ``border``-px frame."""
    d = _tolerant_diff(a, b)
    if border and min(d.shape) > 4 * border:
        d[:border] = 0
        d[-border:] = 0
        d[:, :border] = 0
        d[:, -border:] = 0
    win = min(LOCAL_WINDOW, *a.shape)
    soft = cv2.blur(d, (win, win))
    strong = cv2.blur(np.where(d > STRONG_DIFF, d, 0), (win, win))
    return float(soft.max()), float(strong.max())


def _verify_size(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """(f, a0, b0, al, bl, rho): both at <= VERIFY_MAX px (scale f), blurred (sigma 0.8), and their
    correlation: the cheap first part of :func:`compare_aligned`."""
    h, w = a.shape
    f = min(1.0, VERIFY_MAX / max(h, w))
    a0, b0 = (_resize(a, w * f, h * f), _resize(b, w * f, h * f)) if f < 1 else (a, b)
    al = cv2.GaussianBlur(a0, (0, 0), 0.8)
    bl = cv2.GaussianBlur(b0, (0, 0), 0.8)
    return f, a0, b0, al, bl, _corr(al, bl)


def compare_aligned(a: np.ndarray, b: np.ndarray, sized: tuple | None = None) -> tuple[float, float, float]:
    """(rho, local, strong) of two aligned same-size grey images (see module doc, step 3);
    ``sized``: their :func:`_verify_size` when already computed."""
    f, a0, b0, al, bl, rho = sized if sized is not None else _verify_size(a, b)
    if min(al.shape) < 4:
        return rho, float(np.abs(al - bl).mean()), 0.0
    bl = _photometric(al, bl)
    shifts, m = _tile_shifts(al, bl)
    local, _ = _measure(al, _apply_shifts(bl, shifts, TILE, m), BORDER)
    # strong differences on sharper copies, with the same shifts
    a5 = cv2.GaussianBlur(a0, (0, 0), 0.5)
    b5 = _photometric(a5, cv2.GaussianBlur(b0, (0, 0), 0.5))
    _, strong = _measure(a5, _apply_shifts(b5, shifts, TILE, m), BORDER)
    if f < 0.9:  # full size: the same tile shifts, scaled
        k = 1 / f
        ah = cv2.GaussianBlur(a, (0, 0), 0.5)
        bh = _photometric(ah, cv2.GaussianBlur(b, (0, 0), 0.5))
        full = _measure(ah, _apply_shifts(bh, np.round(shifts * k).astype(np.int32), int(round(TILE * k)),
                                          int(np.ceil(m * k))), int(np.ceil(BORDER * k)))
        local, strong = max(local, full[0]), max(strong, full[1])
    return rho, local, strong


def _s_rho(rho: float) -> float:
    return 1 - 0.2 * (1 - rho) / (1 - RHO_CRIT)


def _score(rho: float, local: float, strong: float, plain: float | None = None) -> float:
    s_rho = _s_rho(rho)
    s_local = 1 - 0.2 * max(local / LOCAL_CRIT, strong / STRONG_CRIT, (plain or 0.0) / PLAIN_CRIT)
    return float(np.clip(min(s_rho, s_local), 0.0, 1.0))


def _common(w: float, h: float) -> tuple[float, float]:
    """Comparison size: the lower native resolution, upsampled to >= MIN_VERIFY px, <= WORK_MAX."""
    f = max(1.0, MIN_VERIFY / max(w, h))
    f = min(f, WORK_MAX / max(w, h))
    return w * f, h * f


@dataclass
class _Aligned:
    """A hypothesis cut to its common region at the comparison size, with its correlation (cheap);
    :meth:`measure` adds the local differences (the expensive part)."""

    va: _View
    vb: _View
    A: np.ndarray
    B: np.ndarray
    sized: tuple

    @property
    def rho(self) -> float:
        return self.sized[-1]

    def measure(self) -> dict:
        rho, local, strong = compare_aligned(self.A, self.B, self.sized)
        plain = _plain_check(self.va, self.vb)
        return {"score": _score(rho, local, strong, plain), "rho": rho, "local": local, "strong": strong,
                "plain": plain}


def _align(va: _View, vb: _View, hyp: _Hyp | None) -> _Aligned | None:
    """Cut both images to the hypothesised common region at a common size (None: no overlap)."""
    if hyp is not None:
        small, big = (vb, va) if hyp.swap else (va, vb)
        x0, y0 = max(0, int(round(hyp.x))), max(0, int(round(hyp.y)))
        x1 = min(big.g.shape[1], int(round(hyp.x + hyp.w)))
        y1 = min(big.g.shape[0], int(round(hyp.y + hyp.h)))
        if x1 <= x0 or y1 <= y0:
            return None
        region = big.crop(x0, y0, x1, y1)
        va, vb = (region, small) if hyp.swap else (small, region)
    w, h = _common(min(va.g.shape[1], vb.g.shape[1]), min(va.g.shape[0], vb.g.shape[0]))
    A, B = _resize(va.g, w, h), _resize(vb.g, w, h)
    return _Aligned(va, vb, A, B, _verify_size(A, B))


NO_OVERLAP = {"score": 0.0, "rho": 0.0, "local": 1.0, "strong": 1.0, "plain": None}


def _native_box(v: _View) -> tuple[int, int, int, int]:
    """The native pixels (x0, y0, x1, y1) that view ``v`` shows."""
    gh, gw = v.g.shape
    return round(v.x0), round(v.y0), round(v.x0 + v.sx * gw), round(v.y0 + v.sy * gh)


def _padded(img: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """``img[y0:y1, x0:x1]``, the part outside the image filled by replicating its border."""
    H, W = img.shape
    patch = img[max(0, y0):min(H, y1), max(0, x0):min(W, x1)]
    return cv2.copyMakeBorder(patch, max(0, -y0), max(0, y1 - H), max(0, -x0), max(0, x1 - W), cv2.BORDER_REPLICATE)


def _plain_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """LOCAL_WINDOW-px window means of the plain difference |a - b| where it exceeds PLAIN_DIFF."""
    d = np.abs(a - b)
    return cv2.blur(np.where(d > PLAIN_DIFF, d, 0).astype(np.float32), (LOCAL_WINDOW, LOCAL_WINDOW))


_SUBPIXEL = [(dy, dx) for dy in (-0.5, -0.25, 0.0, 0.25, 0.5) for dx in (-0.5, -0.25, 0.0, 0.25, 0.5)]


def _realign_tile(a: np.ndarray, bp: np.ndarray) -> np.ndarray:
    """The part of ``bp`` (``a``'s tile with a 2 px margin) that best fits ``a`` (least squares) within
    +-1 px of the margin's centre, at quarter-pixel steps."""
    best, out = np.inf, bp[2:2 + a.shape[0], 2:2 + a.shape[1]]
    for dy, dx in _SUBPIXEL:
        shifted = cv2.warpAffine(bp, np.float32([[1, 0, -dx], [0, 1, -dy]]), (bp.shape[1], bp.shape[0]),
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        res = cv2.matchTemplate(shifted, a, cv2.TM_SQDIFF)[1:4, 1:4]
        mn, _, loc, _ = cv2.minMaxLoc(res)
        if mn < best:
            best = mn
            out = shifted[1 + loc[1]: 1 + loc[1] + a.shape[0], 1 + loc[0]: 1 + loc[0] + a.shape[1]]
    return out


def _plain_check(va: _View, vb: _View) -> float | None:
    """Largest window mean of the plain difference above PLAIN_DIFF at native resolution, when the two
    regions share a pixel grid (native sizes within SAME_GRID or 2 px); else None (see module doc)."""
    ax0, ay0, ax1, ay1 = _native_box(va)
    bx0, by0, bx1, by1 = _native_box(vb)
    wa, ha, wb, hb = ax1 - ax0, ay1 - ay0, bx1 - bx0, by1 - by0
    if min(wa, ha, wb, hb) < 4 * LOCAL_WINDOW:
        return None
    if abs(wa - wb) > max(2, SAME_GRID * max(wa, wb)) or abs(ha - hb) > max(2, SAME_GRID * max(ha, hb)):
        return None
    w, h = min(wa, wb), min(ha, hb)
    r = PLAIN_SEARCH + abs(wa - wb) + abs(ha - hb)
    A = cv2.GaussianBlur(va.native[ay0:ay0 + h, ax0:ax0 + w], (0, 0), 0.5)
    if grey_std(A) < 1e-3:
        return None
    Bp = cv2.GaussianBlur(_padded(vb.native, bx0 - r, by0 - r, bx0 + w + r, by0 + h + r), (0, 0), 0.5)
    Bp = _photometric(A, Bp[r:r + h, r:r + w], Bp)
    _, _, (ox, oy), _ = cv2.minMaxLoc(cv2.matchTemplate(Bp, A, cv2.TM_SQDIFF))  # one integer offset
    m = _plain_map(A, Bp[oy:oy + h, ox:ox + w])
    bd = BORDER + LOCAL_WINDOW // 2 + 1
    m[:bd] = 0
    m[-bd:] = 0
    m[:, :bd] = 0
    m[:, -bd:] = 0
    # the windows that matter, largest first: their PLAIN_TILE-px tile re-aligned on its own (a glyph
    # drawn at another sub-pixel phase); an edited value cannot be shifted away
    half = PLAIN_TILE // 2
    checked = np.zeros(m.shape, bool)
    for _ in range(PLAIN_CANDIDATES):
        y, x = np.unravel_index(int(np.argmax(np.where(checked, 0, m))), m.shape)
        if checked[y, x] or m[y, x] < 0.5 * PLAIN_CRIT:
            break
        y0, y1, x0, x1 = max(0, y - half), min(h, y + half), max(0, x - half), min(w, x + half)
        ta = A[y0:y1, x0:x1]
        tile = _plain_map(ta, _realign_tile(ta, _padded(Bp, ox + x0 - 2, oy + y0 - 2, ox + x1 + 2, oy + y1 + 2)))
        ys0, ys1 = max(y0, y - LOCAL_WINDOW), min(y1, y + LOCAL_WINDOW + 1)
        xs0, xs1 = max(x0, x - LOCAL_WINDOW), min(x1, x + LOCAL_WINDOW + 1)
        m[ys0:ys1, xs0:xs1] = tile[ys0 - y0:ys1 - y0, xs0 - x0:xs1 - x0]
        checked[ys0:ys1, xs0:xs1] = True
    return float(m.max())


def image_match(a_bytes: bytes, b_bytes: bytes) -> dict:
    """Score and details of recorded image ``a_bytes`` against replayed ``b_bytes``."""
    if a_bytes == b_bytes:
        return {"score": 1.0, "how": "identical", "rho": 1.0, "local": 0.0, "strong": 0.0, "plain": 0.0}
    a_full, b_full = _View.of(decode_gray(a_bytes)), _View.of(decode_gray(b_bytes))
    a, b = a_full.crop(*_trim_box(a_full.g)), b_full.crop(*_trim_box(b_full.g))
    best: dict = {"score": -1.0}
    unlikely: list[tuple[_Aligned | None, str]] = []  # rho < RHO_CRIT: measured only if nothing else is

    def consider(x: _View, y: _View, hyp: _Hyp | None) -> float:
        """The hypothesis's rho; measured in full (and kept if best) when it can reach ACCEPT."""
        nonlocal best
        how = "same region" if hyp is None else ("replayed inside recorded" if hyp.swap else "recorded inside replayed")
        aligned = _align(x, y, hyp)
        if aligned is None or _s_rho(aligned.rho) < ACCEPT:
            unlikely.append((aligned, how))
            return 0.0 if aligned is None else aligned.rho
        r = aligned.measure()
        if r["score"] > best["score"]:
            best = {**r, "how": how}
        return r["rho"]

    # same region: trimmed (plot margins, padding) and as recorded
    trimmed = a.g.shape != a_full.g.shape or b.g.shape != b_full.g.shape
    same_rho = 0.0
    for x, y in [(a, b), (a_full, b_full), (a_full, b), (a, b_full)][: 4 if trimmed else 1]:
        same_rho = max(same_rho, consider(x, y, None))
        if best["score"] >= EARLY_ACCEPT:
            return best
    # containment, searched on the images as recorded (a trimmed image could hide a missing part);
    # not when the same region already corresponds pixel for pixel (a difference is then of content)
    if same_rho < SAME_REGION_RHO and grey_std(a_full.g) > 1e-3 and grey_std(b_full.g) > 1e-3:
        for hyp in sorted(_search(a_full.g, b_full.g), key=lambda h: -h.corr):
            consider(a_full, b_full, hyp)
    if best["score"] < 0:  # no hypothesis correlates well enough to be faithful: the best-correlated one, measured
        aligned, how = max(unlikely, key=lambda u: -1.0 if u[0] is None else u[0].rho)
        best = {**(NO_OVERLAP if aligned is None else aligned.measure()), "how": how}
    return best


def image_similarity(a: bytes, b: bytes) -> float:
    """Fidelity of recorded image ``a`` to replayed image ``b`` in [0, 1] (see module doc)."""
    return float(image_match(a, b)["score"])


# --- code that cannot reproduce its picture ---------------------------------------------------
RANDOM_LAYOUTS = frozenset({"spring_layout", "fruchterman_reingold_layout", "random_layout", "arf_layout",
                            "forceatlas2_layout"})
_SEEDING = frozenset({"seed", "default_rng", "RandomState", "Generator", "SeedSequence", "Random", "getstate",
                      "setstate", "get_state", "set_state"})


def _dotted(node: ast.AST) -> str:
    """``np.random.rand`` for the callee ``np.random.rand`` (``""`` when it is not a dotted name)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def unseeded_randomness(code: str | None) -> str | None:
    """What makes a cell's picture irreproducible, or None: a networkx random layout
    (RANDOM_LAYOUTS) called without ``seed=``, or a ``random.*``/``np.random.*`` draw (including
    names imported from those modules, and ``default_rng()``/``RandomState()`` without a seed) with
    no ``seed(...)`` call earlier in the cell. Code that does not parse: None."""
    try:
        tree = ast.parse(code or "")
    except (SyntaxError, ValueError):
        return None
    from_random = {}  # local name -> module, for "from random import randint" / "from numpy.random import rand"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("random", "numpy.random"):
            for alias in node.names:
                from_random[alias.asname or alias.name] = node.module
    calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call)), key=lambda n: (n.lineno, n.col_offset))
    seeded = False
    for call in calls:
        name = _dotted(call.func)
        parts = name.split(".")
        last = parts[-1] if name else ""
        if last in RANDOM_LAYOUTS:
            seed = next((k.value for k in call.keywords if k.arg == "seed"), None)
            if seed is None or (isinstance(seed, ast.Constant) and seed.value is None):
                return f"{last} without seed="
            continue
        module = ".".join(parts[:-1]) if len(parts) > 1 else from_random.get(last, "")
        if not module or module.rsplit(".", 1)[-1] != "random":
            continue
        if last in _SEEDING:
            if last == "seed" or (last in ("default_rng", "RandomState", "Random") and (call.args or call.keywords)):
                seeded = True  # a seeded global state or generator: its draws repeat
                continue
            if last in ("default_rng", "RandomState", "Random"):
                return f"{name}() without a seed"
            continue
        if not seeded:
            return f"{name} without a prior seed"
    return None


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
    code: str | None = None,
) -> float | None:
    """min(text_fidelity, image_fidelity) over the parts the record has (see module doc); the images
    do not count when ``code`` (the cell's code) draws with unseeded randomness."""
    images = None if unseeded_randomness(code) else images_fidelity(recorded_images, replayed_images)
    parts = [p for p in (text_fidelity(recorded_text, replayed_text, replayed_error), images) if p is not None]
    return min(parts) if parts else None
