"""A procedurally generated, deterministic corpus of Thinking-with-Images trajectories.

Six disciplines (mathematics, physics, chemistry, astronomy, geography, biology), each with real
images whose ground truth is known by construction: geometry worksheets with tiny side/angle
labels, emission spectra with tiny wavelength annotations, titration curves with a tiny
equivalence-point annotation, star fields and micrographs with a marked box to count in, contour
maps with tiny spot heights. Every record follows one of seven *cases* (genuine zoom, decorative
image, failing code, redundant processing, fabricated observation, wrong answer, hostile code)
whose expected route is in ``EXPECTED_ROUTE``.

Observations are recorded faithfully: the generator executes each trusted cell in a temporary
work dir that emulates the replay sandbox (``input_<k>.png`` in the cwd, globals ``image``,
``images``, ``image_paths``, state shared between the cells of a trajectory, stdout captured per
cell, image files newly written during a cell collected sorted by path and re-encoded as PNG).
Fabricated records deliberately record something else, and hostile cells are NEVER executed: their
observation is invented.

Output (``build_sample_corpus``)::

    out_dir/corpus.jsonl    native format (pipeline.formats.native), one record per line
    out_dir/images/*.png    input and observation images (paths in records are relative)
    out_dir/labels.jsonl    {"sample_id", "expected_route", "case", "discipline"} per record
    out_dir/.sample_corpus.json   marker {n, seed, version}, written last
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import functools
import hashlib
import io
import json
import linecache
import math
import os
import re
import shutil
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.formats.native import (
    KEY_ANSWER,
    KEY_CODE,
    KEY_DATASET,
    KEY_DISCIPLINE,
    KEY_FINAL_ANSWER,
    KEY_ID,
    KEY_IMAGES,
    KEY_OBS_IMAGES,
    KEY_OBS_TEXT,
    KEY_OBSERVATION,
    KEY_QUESTION,
    KEY_REASONING,
    KEY_TURNS,
)
from schemas.sample import (
    DISCIPLINE,
    IMG_SHA256,
    SAMPLE_ID,
    TURN_CODE,
    TURN_OBS_IMAGES,
    TURN_OBS_TEXT,
    TURN_REASONING,
    compute_sample_id,
)

# --- public constants ----------------------------------------------------------------------
CORPUS_VERSION = "1"
DATASET_NAME = "twi-sample"
CORPUS_FILE = "corpus.jsonl"
LABELS_FILE = "labels.jsonl"
IMAGES_DIR = "images"
MARKER_FILE = ".sample_corpus.json"
LOCK_FILE = ".sample_corpus.lock"

CASES = ("zoom", "decorative", "failing_code", "redundant", "fabricated", "wrong_answer", "hostile")
EXPECTED_ROUTE = {
    "zoom": "twi",
    "decorative": "text",
    "redundant": "text",
    "failing_code": "rejected",
    "fabricated": "rejected",
    "wrong_answer": "rejected",
    "hostile": "rejected",
}
# Per discipline, records walk through this cycle (two genuine zooms per eight records).
CASE_CYCLE = (
    "zoom",
    "decorative",
    "zoom",
    "failing_code",
    "redundant",
    "fabricated",
    "wrong_answer",
    "hostile",
)
CORPUS_DISCIPLINES = ("mathematics", "physics", "chemistry", "astronomy", "geography", "biology")
ID_PREFIX = {
    "mathematics": "math",
    "physics": "phys",
    "chemistry": "chem",
    "astronomy": "astro",
    "geography": "geo",
    "biology": "bio",
}
# labels.jsonl keys (sample_id / discipline are the schema's column names)
LABEL_SAMPLE_ID = SAMPLE_ID
LABEL_EXPECTED_ROUTE = "expected_route"
LABEL_CASE = "case"
LABEL_DISCIPLINE = DISCIPLINE

# Filename the cells are compiled under (shows up in recorded tracebacks).
CELL_FILENAME = "<cell>"
# Files the hostile variants would create if they ever ran (tests assert they do not exist).
HOSTILE_ARTIFACTS = ("/etc/twi_pwned", "/tmp/twi_exfil_input.png")

Box = tuple[int, int, int, int]


def case_plan(n: int) -> list[tuple[str, str]]:
    """(discipline, case) of records 0..n-1: disciplines interleave, cases follow CASE_CYCLE."""
    nd, nc = len(CORPUS_DISCIPLINES), len(CASE_CYCLE)
    return [(CORPUS_DISCIPLINES[i % nd], CASE_CYCLE[(i // nd) % nc]) for i in range(n)]


# --- image helpers -------------------------------------------------------------------------
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})


def png_bytes(im: Image.Image) -> bytes:
    """Deterministic PNG encoding (no timestamps, default zlib level)."""
    if im.mode not in _PNG_MODES:
        im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # type: ignore[return-value]


def _ibox(*vals: float) -> Box:
    x0, y0, x1, y1 = (int(round(float(v))) for v in vals)
    return (x0, y0, x1, y1)


def _pad_box(box: Box, px: int, py: int, size: tuple[int, int]) -> Box:
    W, H = size
    return _ibox(max(0, box[0] - px), max(0, box[1] - py), min(W, box[2] + px), min(H, box[3] + py))


def _same_size_box(view: Box, center: tuple[float, float], size: tuple[int, int]) -> Box:
    """A box of view's size centred on center, shifted to stay inside the image."""
    W, H = size
    w, h = view[2] - view[0], view[3] - view[1]
    x0 = int(min(max(0, round(center[0] - w / 2)), W - w))
    y0 = int(min(max(0, round(center[1] - h / 2)), H - h))
    return (x0, y0, x0 + w, y0 + h)


def _decoy_box(rng: np.random.Generator, view: Box, size: tuple[int, int], corner: tuple[int, int], bs: int) -> Box:
    """A box of view's size centred at a random point at least 3 box sides from the bs-sided box
    at ``corner``: a same-size region that shows nothing of interest."""
    W, H = size
    for _ in range(10_000):
        cx, cy = float(rng.uniform(bs, W - bs)), float(rng.uniform(bs, H - bs))
        if math.hypot(cx - corner[0] - bs / 2, cy - corner[1] - bs / 2) > 3 * bs:
            return _same_size_box(view, (cx, cy), size)
    # a box too large for its image has no point that far: take the point farthest from it (some
    # scenes of larger corpora drew such boxes and this loop never ended)
    far = max(((bs, bs), (W - bs, bs), (bs, H - bs), (W - bs, H - bs)),
              key=lambda p: math.hypot(p[0] - corner[0] - bs / 2, p[1] - corner[1] - bs / 2))
    return _same_size_box(view, (float(far[0]), float(far[1])), size)


def _center(box: Box) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def _num(x: float) -> str:
    return f"{x:.10g}"


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


def _misread(value: str, rng: np.random.Generator) -> str:
    """A plausible misreading of a printed value: one digit swapped for a look-alike."""
    digits = [k for k, ch in enumerate(value) if ch.isdigit()]
    k = digits[int(rng.integers(len(digits)))]
    return value[:k] + _CONFUSE[value[k]] + value[k + 1 :]


def _line(text: str, key: str) -> str:
    for ln in text.splitlines():
        if key in ln:
            return ln.strip()
    lines = text.strip().splitlines()
    return lines[-1].strip() if lines else ""


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1].strip() if lines else ""


# --- sandbox emulation ---------------------------------------------------------------------
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def _format_cell_error(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != CELL_FILENAME:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


class CellSession:
    """In-process emulation of the replay sandbox for TRUSTED code (the generator's own cells).

    The work dir holds ``input_<k>.png``; globals ``image``, ``images`` and ``image_paths`` are
    predefined and shared by every cell of the session. ``run`` returns (stdout + traceback text,
    PNG bytes of the image files newly written or changed during the cell, sorted by path).
    Matplotlib figures are not captured (the corpus cells never use plt.show()).
    """

    def __init__(self, workdir: Path, inputs: Sequence[bytes]) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        paths: list[str] = []
        pil: list[Image.Image] = []
        for k, data in enumerate(inputs):
            name = f"input_{k}.png"
            (self.workdir / name).write_bytes(data)
            paths.append(name)
            im = Image.open(self.workdir / name)
            im.load()
            pil.append(im)
        self.globals: dict[str, Any] = {
            "__name__": "__main__",
            "__builtins__": builtins,
            "image": pil[0] if pil else None,
            "images": pil,
            "image_paths": paths,
        }

    def _snapshot(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for p in self.workdir.rglob("*"):
            if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES:
                out[p.relative_to(self.workdir).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
        return out

    def run(self, code: str) -> tuple[str, list[bytes]]:
        before = self._snapshot()
        buf = io.StringIO()
        error = ""
        prev = os.getcwd()
        linecache.cache[CELL_FILENAME] = (len(code), None, code.splitlines(True), CELL_FILENAME)
        try:
            os.chdir(self.workdir)
            with contextlib.redirect_stdout(buf):
                exec(compile(code, CELL_FILENAME, "exec"), self.globals)
        except (Exception, SystemExit) as exc:
            error = _format_cell_error(exc)
        finally:
            os.chdir(prev)
            linecache.cache.pop(CELL_FILENAME, None)
        after = self._snapshot()
        images: list[bytes] = []
        for rel in sorted(after):
            if before.get(rel) == after[rel]:
                continue
            with Image.open(self.workdir / rel) as im:
                im.load()
                images.append(png_bytes(im))
        return buf.getvalue() + error, images


def execute_cells(codes: Sequence[str], inputs: Sequence[bytes]) -> list[tuple[str, list[bytes]]]:
    """Run the cells of one trajectory in a fresh emulated sandbox (trusted code only)."""
    with tempfile.TemporaryDirectory(prefix="twi-sample-exec-") as tmp:
        session = CellSession(Path(tmp) / "work", inputs)
        return [session.run(code) for code in codes]


# --- scenes --------------------------------------------------------------------------------
@dataclass
class Scene:
    image: Image.Image
    kind: str  # "label" | "count" | "decorative"
    question: str
    answer: str
    target: Box  # label: bbox of the annotation; count: interior of the marked box; decorative: label bbox
    decoy: Box = (0, 0, 0, 0)  # label: another annotation; count: a same-size region elsewhere
    decoy_value: str = ""
    topic: dict[str, Any] = field(default_factory=dict)


_BIG_SIZES = ((3200, 2400), (3000, 3000), (3400, 2550), (3000, 2400))
_WIDE_SIZES = ((3000, 2250), (2800, 2100), (2600, 1950))
_MID_SIZES = ((2400, 1800), (2600, 1950), (3000, 2250), (2200, 2200))
_SMALL_SIZES = ((800, 600), (720, 540), (640, 480), (800, 500))


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _view_note(W: int, H: int) -> str:
    factor = max(W, H) / 1024
    return f"roughly {factor:.0f}x"


def _text_box(
    d: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: Any, fill: Any, anchor: str
) -> Box:
    d.text(xy, text, font=font, fill=fill, anchor=anchor)
    return _ibox(*d.textbbox(xy, text, font=font, anchor=anchor))


# mathematics --------------------------------------------------------------------------------
def _scene_math(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    W, H = size
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    step = int(rng.integers(80, 130))
    for x in range(step, W, step):
        d.line([(x, 0), (x, H)], fill=(224, 233, 246), width=1)
    for y in range(step, H, step):
        d.line([(0, y), (W, y)], fill=(224, 233, 246), width=1)
    sheet = int(rng.integers(2, 19))
    d.text(
        (int(0.04 * W), int(0.03 * H)),
        f"Worksheet {sheet} - Triangles and circles (figures drawn to scale)",
        font=_font(max(30, W // 70)),
        fill=(30, 30, 30),
    )
    tiny = int(rng.integers(11, 15))
    ft = _font(tiny)
    letter = _font(max(36, W // 60))
    scale = float(rng.uniform(110, 170))  # px per cm
    s = min(W, H)
    # triangle ABC
    for _ in range(2000):
        pts = rng.uniform([0.08 * W, 0.17 * H], [0.6 * W, 0.9 * H], size=(3, 2))
        sides = [
            float(np.hypot(*(pts[(k + 1) % 3] - pts[(k + 2) % 3]))) for k in range(3)
        ]  # opposite vertex k
        a, b, c = sides
        angs = [
            math.degrees(math.acos(max(-1.0, min(1.0, (b * b + c * c - a * a) / (2 * b * c))))),
            math.degrees(math.acos(max(-1.0, min(1.0, (a * a + c * c - b * b) / (2 * a * c))))),
        ]
        angs.append(180.0 - angs[0] - angs[1])
        if min(sides) > 0.3 * s and min(angs) > 28:
            break
    names = "ABC"
    cen = pts.mean(axis=0)
    d.polygon([tuple(p) for p in pts], outline=(20, 20, 20), width=4)
    labels: dict[str, tuple[str, Box]] = {}
    for k in range(3):
        p = pts[k]
        d.ellipse([p[0] - 6, p[1] - 6, p[0] + 6, p[1] + 6], fill=(20, 20, 20))
        u = (p - cen) / np.linalg.norm(p - cen)
        d.text(tuple(p + u * 48), names[k], font=letter, fill=(20, 20, 20), anchor="mm")
        # angle arc + tiny label
        q1, q2 = pts[(k + 1) % 3], pts[(k + 2) % 3]
        a1 = math.degrees(math.atan2(q1[1] - p[1], q1[0] - p[0]))
        a2 = math.degrees(math.atan2(q2[1] - p[1], q2[0] - p[0]))
        if (a2 - a1) % 360 > 180:
            a1, a2 = a2, a1
        d.arc([p[0] - 34, p[1] - 34, p[0] + 34, p[1] + 34], start=a1, end=a2, fill=(60, 60, 160), width=2)
        pos = p - u * 62
        labels["angle " + names[k]] = (
            f"{angs[k]:.0f}°",
            _text_box(d, tuple(pos), f"{angs[k]:.0f}°", ft, (40, 40, 40), "mm"),
        )
    side_len: dict[str, float] = {}
    for k in range(3):
        i0, i1 = (k + 1) % 3, (k + 2) % 3
        nm = "".join(sorted(names[i0] + names[i1]))
        nm = {"AB": "AB", "BC": "BC", "AC": "CA"}[nm]
        mid = (pts[i0] + pts[i1]) / 2
        u = (mid - cen) / np.linalg.norm(mid - cen)
        val = sides[k] / scale
        side_len[nm] = round(val, 1)
        txt = f"{val:.1f} cm"
        labels["side " + nm] = (txt, _text_box(d, tuple(mid + u * 24), txt, ft, (40, 40, 40), "mm"))
    # circle with centre O, radius and chord annotations
    ox, oy = 0.8 * W, 0.4 * H
    r = float(rng.uniform(0.1, 0.14)) * s
    d.ellipse([ox - r, oy - r, ox + r, oy + r], outline=(20, 20, 20), width=4)
    d.ellipse([ox - 5, oy - 5, ox + 5, oy + 5], fill=(20, 20, 20))
    d.text((ox - 30, oy + 30), "O", font=letter, fill=(20, 20, 20), anchor="mm")
    th = float(rng.uniform(-0.6, 0.6))
    px, py = ox + r * math.cos(th), oy - r * math.sin(th)
    d.line([(ox, oy), (px, py)], fill=(20, 20, 20), width=3)
    _text_box(d, ((ox + px) / 2, (oy + py) / 2 - 16), f"r = {r / scale:.1f} cm", ft, (40, 40, 40), "mm")
    t1, t2 = float(rng.uniform(3.4, 4.0)), float(rng.uniform(4.9, 5.6))
    c1 = (ox + r * math.cos(t1), oy - r * math.sin(t1))
    c2 = (ox + r * math.cos(t2), oy - r * math.sin(t2))
    d.line([c1, c2], fill=(160, 40, 40), width=3)
    chord = math.hypot(c1[0] - c2[0], c1[1] - c2[1]) / scale
    _text_box(d, ((c1[0] + c2[0]) / 2 - 60, (c1[1] + c2[1]) / 2), f"{chord:.1f} cm", ft, (160, 40, 40), "mm")
    # small triangle DEF
    q = rng.uniform([0.66 * W, 0.8 * H], [0.96 * W - 0.2 * s, 0.9 * H], size=(3, 2))
    q[1] = q[0] + np.array([0.2 * s, 0.02 * s])
    q[2] = q[0] + np.array([0.07 * s, -0.16 * s])
    qc = q.mean(axis=0)
    d.polygon([tuple(p) for p in q], outline=(20, 90, 40), width=3)
    for k, nm in enumerate("DEF"):
        u = (q[k] - qc) / np.linalg.norm(q[k] - qc)
        d.text(tuple(q[k] + u * 40), nm, font=letter, fill=(20, 90, 40), anchor="mm")
        j = (k + 1) % 3
        mid = (q[k] + q[j]) / 2
        u2 = (mid - qc) / np.linalg.norm(mid - qc)
        _text_box(
            d, tuple(mid + u2 * 22), f"{np.hypot(*(q[k] - q[j])) / scale:.1f} cm", ft, (20, 90, 40), "mm"
        )

    angle_q = bool(rng.random() < 0.35)
    fac = _view_note(W, H)
    if angle_q:
        v = names[int(rng.integers(3))]
        others = [n for n in names if n != v]
        key, dkey = "angle " + v, "angle " + others[int(rng.integers(2))]
        question = (
            f"The worksheet shows triangle ABC with its interior angles annotated in small print inside each "
            f"angle arc. What is the interior angle at vertex {v}, as labelled in the figure?"
        )
        target_np, where = f"the angle annotation at vertex {v}", f"inside the arc at vertex {v}"
        b_, c_ = (labels["angle " + o][0] for o in others)
        ans = labels[key][0]
        tot = sum(int(x.rstrip("°")) for x in (ans, b_, c_))
        tail = (
            "exactly 180°, as they must"
            if tot == 180
            else f"{tot}°, i.e. 180° up to rounding of the printed values"
        )
        note = f"As a check, the other two angles are labelled {b_} and {c_}; together with {ans} they sum to {tail}."
    else:
        nm = _pick(rng, ("AB", "BC", "CA"))
        others = [o for o in ("AB", "BC", "CA") if o != nm]
        key, dkey = "side " + nm, "side " + others[int(rng.integers(2))]
        question = (
            f"The worksheet shows triangle ABC drawn to scale, with every side annotated with its length in "
            f"small print. What is the length of side {nm} as labelled in the diagram?"
        )
        target_np, where = f"the length annotation of side {nm}", f"just outside side {nm}"
        ans = labels[key][0]
        ob = [labels["side " + o][0] for o in others]
        rank = sorted(side_len, key=side_len.get)
        pos = {0: "shortest", 1: "middle", 2: "longest"}[rank.index(nm)]
        note = (
            f"As a sanity check, the other two sides are labelled {ob[0]} and {ob[1]}; {ans} satisfies the "
            f"triangle inequality ({ob[0][:-3]} + {ob[1][:-3]} > {ans[:-3]}), and {nm} is visibly the {pos} "
            f"side of the drawing, which matches the ordering of the three labels."
        )
    topic = {
        "overview": (
            f"The image is a {W}x{H} worksheet page on graph paper: triangle ABC on the left, a circle with "
            f"centre O on the right and a smaller triangle DEF below it. The vertex letters are large, but all "
            f"lengths and angles are printed in a tiny font of about {tiny} px."
        ),
        "target": target_np,
        "where": where,
        "zoom_why": (
            f"Viewing the whole page requires downsampling it {fac}, which turns {tiny}-px digits into "
            f"smudges of two or three pixels, so I need to crop around that annotation and enlarge it."
        ),
        "bg": "graph-paper grid",
        "note": note,
    }
    return Scene(img, "label", question, ans, labels[key][1], labels[dkey][1], labels[dkey][0], topic)


# physics ------------------------------------------------------------------------------------
_LAMPS = ("H-1", "He-2", "Ne-3", "Hg-4", "Na-5", "Xe-6", "Kr-7")


def _band_name(lam: float) -> str:
    for hi, nm in ((450, "violet"), (495, "blue"), (570, "green"), (590, "yellow"), (620, "orange")):
        if lam < hi:
            return nm
    return "red"


def _scene_phys(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    W, H = size
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    L, R, T, B = int(0.09 * W), int(0.96 * W), int(0.11 * H), int(0.87 * H)
    lam0, lam1, ymax = 380.0, 720.0, 1.25
    k = int(rng.integers(4, 7))
    centres: list[float] = []
    while len(centres) < k:
        c = round(float(rng.uniform(405, 695)), 1)
        if all(abs(c - o) >= 28 for o in centres):
            centres.append(c)
    heights = rng.uniform(0.25, 0.8, k)
    heights[int(rng.integers(k))] = 1.0
    widths = rng.uniform(1.4, 3.2, k)

    def inten(lam: np.ndarray) -> np.ndarray:
        y = 0.05 + 0.025 * np.sin((lam - lam0) / 55.0)
        for c, h, w in zip(centres, heights, widths, strict=True):
            y = y + h * np.exp(-0.5 * ((lam - c) / w) ** 2)
        return y

    def X(lam: float) -> float:
        return L + (lam - lam0) / (lam1 - lam0) * (R - L)

    def Y(v: float) -> float:
        return B - v / ymax * (B - T)

    for lam in range(400, 720, 20):
        d.line([(X(lam), T), (X(lam), B)], fill=(232, 232, 232), width=1)
    for j in range(1, 13):
        d.line([(L, Y(j / 10)), (R, Y(j / 10))], fill=(232, 232, 232), width=1)
    d.rectangle([L, T, R, B], outline=(0, 0, 0), width=3)
    ftick = _font(max(20, W // 140))
    for lam in range(400, 720, 40):
        d.line([(X(lam), B), (X(lam), B + 12)], fill=(0, 0, 0), width=2)
        d.text((X(lam), B + 18), str(lam), font=ftick, fill=(0, 0, 0), anchor="mt")
    for j in range(0, 13, 2):
        d.text((L - 14, Y(j / 10)), f"{j / 10:.1f}", font=ftick, fill=(0, 0, 0), anchor="rm")
    flab = _font(max(26, W // 100))
    d.text(((L + R) / 2, B + 70), "Wavelength (nm)", font=flab, fill=(0, 0, 0), anchor="mt")
    d.text((L, T - 16), "Relative intensity", font=flab, fill=(0, 0, 0), anchor="ld")
    lamp = _pick(rng, _LAMPS)
    d.text(
        (L, int(0.03 * H)),
        f"Emission spectrum of discharge lamp {lamp}",
        font=_font(max(34, W // 70)),
        fill=(0, 0, 0),
    )
    xs = np.arange(L, R + 1, dtype=np.float64)
    lam = lam0 + (xs - L) / (R - L) * (lam1 - lam0)
    ys = B - inten(lam) / ymax * (B - T)
    d.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=(25, 70, 190), width=3)
    tiny = int(rng.integers(11, 15))
    ft = _font(tiny)
    order = np.argsort(-heights)[:3]
    boxes: list[tuple[str, Box]] = []
    for idx in order:
        c = centres[int(idx)]
        x, y = X(c), Y(float(inten(np.array([c]))[0]))
        d.line([(x, y - 8), (x, y - 18)], fill=(200, 30, 30), width=2)
        boxes.append((f"{c:.1f} nm", _text_box(d, (x, y - 22), f"{c:.1f} nm", ft, (60, 60, 60), "md")))
    ans, tbox = boxes[0]
    dval, dbox = boxes[1 + int(rng.integers(len(boxes) - 1))]
    val = float(ans.split()[0])
    question = (
        f"The plot shows the emission spectrum of discharge lamp {lamp}; its three strongest lines are annotated "
        f"with their wavelengths in small print. What is the wavelength of the strongest emission line, as "
        f"annotated on the plot?"
    )
    topic = {
        "overview": (
            f"The image is a {W}x{H} spectrum plot: relative intensity versus wavelength from 380 to 720 nm "
            f"with {k} emission lines on a weak continuum. The axis ticks are readable, but the wavelength "
            f"annotations above the peaks are printed in a {tiny}-px font."
        ),
        "target": "the wavelength annotation above the strongest (tallest) emission line",
        "where": "just above the tallest peak",
        "zoom_why": (
            f"The tallest peak is obvious even at overview scale, but after downsampling {_view_note(W, H)} its "
            f"{tiny}-px annotation is unreadable; I'll crop the area directly above that peak and enlarge it."
        ),
        "bg": "plot grid",
        "note": (
            f"A line at {ans} lies in the {_band_name(val)} part of the visible spectrum; its photon energy is "
            f"E = hc/lambda = 1239.84 eV nm / {val} nm = {1239.84 / val:.2f} eV, a typical value for an "
            f"atomic transition in a gas discharge."
        ),
    }
    return Scene(img, "label", question, ans, tbox, dbox, dval, topic)


# chemistry ----------------------------------------------------------------------------------
def _titration_ph(v: np.ndarray, params: tuple[float, float, float, float, float]) -> np.ndarray:
    """Weak acid + strong base: initial rise, buffer region, jump centred at veq, basic plateau."""
    ph0, a, jump, w, veq = params
    base = ph0 + a * (1 - np.exp(-v / (0.12 * veq))) + 0.025 * v
    return np.clip(base + jump / (1 + np.exp(-(v - veq) / w)), 0, 14)


def _scene_chem(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    W, H = size
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    L, R, T, B = int(0.09 * W), int(0.95 * W), int(0.12 * H), int(0.87 * H)
    vmax = 50.0

    def X(v: float | np.ndarray) -> Any:
        return L + v / vmax * (R - L)

    def Y(ph: float | np.ndarray) -> Any:
        return B - ph / 14.0 * (B - T)

    for v in range(5, 50, 5):
        d.line([(X(v), T), (X(v), B)], fill=(232, 232, 232), width=1)
    for ph in range(1, 14):
        d.line([(L, Y(ph)), (R, Y(ph))], fill=(232, 232, 232), width=1)
    d.rectangle([L, T, R, B], outline=(0, 0, 0), width=3)
    ftick = _font(max(20, W // 140))
    for v in range(0, 51, 5):
        d.text((X(v), B + 16), str(v), font=ftick, fill=(0, 0, 0), anchor="mt")
    for ph in range(0, 15, 2):
        d.text((L - 14, Y(ph)), str(ph), font=ftick, fill=(0, 0, 0), anchor="rm")
    flab = _font(max(26, W // 100))
    d.text(((L + R) / 2, B + 70), "Volume of 0.100 M NaOH added (mL)", font=flab, fill=(0, 0, 0), anchor="mt")
    d.text((L, T - 16), "pH", font=flab, fill=(0, 0, 0), anchor="ld")
    d.text(
        (L, int(0.03 * H)),
        "Titration of two weak-acid samples with 0.100 M NaOH",
        font=_font(max(34, W // 70)),
        fill=(0, 0, 0),
    )
    while True:
        va, vb = (round(float(x), 1) for x in rng.uniform(12, 40, 2))
        if abs(va - vb) >= 6:
            break
    tiny = int(rng.integers(11, 15))
    ft = _font(tiny)
    xs = np.arange(L, R + 1, dtype=np.float64)
    vol = (xs - L) / (R - L) * vmax
    ann: dict[str, tuple[str, Box]] = {}
    curves = (("A", va, (30, 80, 200), "blue"), ("B", vb, (200, 40, 40), "red"))
    for name, veq, col, _ in curves:
        params = (
            float(rng.uniform(2.5, 3.3)),
            float(rng.uniform(1.3, 1.9)),
            float(rng.uniform(5.4, 6.4)),
            float(rng.uniform(0.35, 0.6)),
            veq,
        )
        ph = functools.partial(_titration_ph, params=params)
        ys = Y(ph(vol))
        d.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=col, width=4)
        xe, ye = float(X(veq)), float(Y(ph(np.array([veq]))[0]))
        d.ellipse([xe - 7, ye - 7, xe + 7, ye + 7], outline=col, width=2)
        txt = f"Veq = {veq:.1f} mL"
        ann[name] = (txt.split("= ")[1], _text_box(d, (xe + 16, ye + 4), txt, ft, (50, 50, 50), "lm"))
        xh = float(X(veq / 2))
        yh = float(Y(ph(np.array([veq / 2]))[0]))
        d.ellipse([xh - 4, yh - 4, xh + 4, yh + 4], fill=col)
        _text_box(
            d, (xh + 10, yh - 14), f"half-eq. pH {ph(np.array([veq / 2]))[0]:.2f}", ft, (90, 90, 90), "lm"
        )
    fleg = _font(max(24, W // 110))
    lx, ly = L + 40, T + 40
    d.rectangle(
        [lx - 16, ly - 16, lx + 470, ly + 100], fill=(255, 255, 255), outline=(120, 120, 120), width=2
    )
    for j, (name, _, col, cname) in enumerate(curves):
        d.line([(lx, ly + 18 + 48 * j), (lx + 70, ly + 18 + 48 * j)], fill=col, width=5)
        d.text(
            (lx + 90, ly + 18 + 48 * j), f"Sample {name} ({cname})", font=fleg, fill=(0, 0, 0), anchor="lm"
        )
    tname = _pick(rng, ("A", "B"))
    oname = "B" if tname == "A" else "A"
    tcol = "blue" if tname == "A" else "red"
    ans, tbox = ann[tname]
    val = float(ans.split()[0])
    question = (
        f"Two weak-acid samples were titrated with 0.100 M NaOH. For sample {tname} (the {tcol} curve), what "
        f"equivalence-point volume is annotated on the plot?"
    )
    topic = {
        "overview": (
            f"The image is a {W}x{H} titration plot: pH from 0 to 14 against 0-50 mL of added NaOH, with a "
            f"blue curve (sample A) and a red curve (sample B). Each curve has a circled equivalence point "
            f"whose annotation is printed in a {tiny}-px font."
        ),
        "target": f"the equivalence-point annotation of the {tcol} curve (sample {tname})",
        "where": f"next to the circled point on the steep rise of the {tcol} curve",
        "zoom_why": (
            f"I can see where the {tcol} curve jumps, but at the {_view_note(W, H)} downsampling needed to show "
            f"the whole plot the annotation is a grey smear, so I'll crop around the circled equivalence "
            f"point and enlarge it."
        ),
        "bg": "plot grid",
        "note": (
            f"At the equivalence point n(NaOH) = n(acid), so {val} mL x 0.100 mol/L = {val * 0.1:.2f} mmol of "
            f"acid in sample {tname}; the steep jump of the {tcol} curve is indeed centred close to that "
            f"volume on the axis."
        ),
    }
    return Scene(img, "label", question, ans, tbox, ann[oname][1], ann[oname][0], topic)


# astronomy ----------------------------------------------------------------------------------
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


def _inside(box: Box, x: float, y: float, margin: float = 0.0) -> bool:
    return box[0] - margin <= x <= box[2] + margin and box[1] - margin <= y <= box[3] + margin


def _scene_astro(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
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
        _add_star(arr, x, y, sig, float(rng.uniform(110, 250)), _pick(rng, _TINTS))
    n_out = int(W * H / 6500)
    outside = 0
    for _ in range(n_out):
        sig = float(rng.uniform(0.9, 2.8)) if rng.random() < 0.93 else float(rng.uniform(3.0, 5.0))
        x, y = float(rng.uniform(0, W)), float(rng.uniform(0, H))
        if _inside(frame, x, y, 3 * sig + 8):
            continue
        peak = float(rng.uniform(25, 250)) if sig < 3 else 255.0
        _add_star(arr, x, y, sig, peak, _pick(rng, _TINTS))
        outside += 1
    cv2.rectangle(arr, (frame[0], frame[1]), (frame[2], frame[3]), (0, 230, 0), 3)
    img = Image.fromarray(arr, "RGB")
    d = ImageDraw.Draw(img)
    field_no = int(rng.integers(1, 60))
    d.text(
        (30, H - 30),
        f"field {field_no:02d}  R band  300 s",
        font=_font(22),
        fill=(120, 120, 120),
        anchor="ld",
    )
    n = len(placed)
    # decoy: same-size region far from the box
    decoy = _decoy_box(rng, inner, size, (x0, y0), bs)
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


# geography ----------------------------------------------------------------------------------
_HYPSO = (
    (0, (176, 210, 168)),
    (500, (150, 192, 140)),
    (1000, (228, 224, 178)),
    (1500, (224, 198, 146)),
    (2000, (204, 160, 112)),
    (2500, (186, 142, 112)),
    (3200, (238, 238, 238)),
)


def _hypso(e: float) -> tuple[int, int, int]:
    for (e0, c0), (e1, c1) in zip(_HYPSO, _HYPSO[1:], strict=False):
        if e <= e1:
            t = max(0.0, (e - e0) / (e1 - e0))
            return tuple(int(round(a + t * (b - a))) for a, b in zip(c0, c1, strict=True))  # type: ignore[return-value]
    return _HYPSO[-1][1]


def _scene_geo(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    W, H = size
    s = min(W, H)
    f = 4
    h, w = H // f + 1, W // f + 1
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) * f
    field_ = np.full((h, w), float(rng.uniform(80, 250)), np.float32)
    hills: list[tuple[float, float, float]] = []
    tries = 0
    want = int(rng.integers(5, 8))
    while len(hills) < want and tries < 1000:
        tries += 1
        cx, cy = float(rng.uniform(0.14 * W, 0.86 * W)), float(rng.uniform(0.17 * H, 0.86 * H))
        if all(math.hypot(cx - a, cy - b) >= 0.24 * s for a, b, _ in hills):
            sig = float(rng.uniform(0.06, 0.1)) * s
            hills.append((cx, cy, sig))
            amp = float(rng.uniform(500, 2200))
            field_ += amp * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sig * sig))
    for _ in range(2):
        cx, cy, sig = float(rng.uniform(0, W)), float(rng.uniform(0, H)), float(rng.uniform(0.25, 0.4)) * s
        field_ += float(rng.uniform(150, 400)) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sig * sig))
    full = cv2.resize(field_, (W, H), interpolation=cv2.INTER_CUBIC)
    summits: list[tuple[int, int, int]] = []
    rad = int(0.07 * s)
    for cx, cy, _ in hills:
        xa, xb = max(0, int(cx) - rad), min(W, int(cx) + rad)
        ya, yb = max(0, int(cy) - rad), min(H, int(cy) + rad)
        win = full[ya:yb, xa:xb]
        iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
        if 3 < ix < win.shape[1] - 4 and 3 < iy < win.shape[0] - 4:
            summits.append((xa + int(ix), ya + int(iy), int(round(float(win[iy, ix])))))
    interval = 100
    idx = np.floor(full / interval).astype(np.int32)
    lut = np.array([_hypso(k * interval + interval / 2) for k in range(int(idx.max()) + 2)], np.uint8)
    arr = lut[np.clip(idx, 0, len(lut) - 1)]
    bnd = np.zeros((H, W), bool)
    bnd[:, :-1] |= idx[:, 1:] != idx[:, :-1]
    bnd[:-1, :] |= idx[1:, :] != idx[:-1, :]
    idx5 = np.floor(full / 500).astype(np.int32)
    b5 = np.zeros((H, W), bool)
    b5[:, :-1] |= idx5[:, 1:] != idx5[:, :-1]
    b5[:-1, :] |= idx5[1:, :] != idx5[:-1, :]
    arr[bnd] = (135, 95, 60)
    arr[cv2.dilate(b5.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)] = (105, 68, 40)
    img = Image.fromarray(arr, "RGB")
    d = ImageDraw.Draw(img)
    tiny = int(rng.integers(11, 15))
    ft = _font(tiny)
    # contour labels on index contours, away from the summits
    ys_, xs_ = np.nonzero(b5[60:-60, 60:-60])
    placed: list[tuple[int, int]] = []
    if len(xs_):
        for j in rng.permutation(len(xs_))[:400]:
            x, y = int(xs_[j]) + 60, int(ys_[j]) + 60
            if any(math.hypot(x - a, y - b) < 160 for a, b, _ in summits):
                continue
            if any(math.hypot(x - a, y - b) < 260 for a, b in placed):
                continue
            lvl = 500 * int(max(idx5[y, x], idx5[y, x + 1], idx5[y + 1, x]))
            bb = d.textbbox((x, y), str(lvl), font=ft, anchor="mm")
            d.rectangle(
                [bb[0] - 2, bb[1] - 1, bb[2] + 2, bb[3] + 1], fill=tuple(int(v) for v in lut[idx[y, x]])
            )
            d.text((x, y), str(lvl), font=ft, fill=(105, 68, 40), anchor="mm")
            placed.append((x, y))
            if len(placed) >= 12:
                break
    labels: list[tuple[str, Box, tuple[int, int]]] = []
    for x, y, e in summits:
        d.polygon([(x, y - 7), (x - 7, y + 5), (x + 7, y + 5)], fill=(0, 0, 0))
        labels.append((f"{e} m", _text_box(d, (x + 12, y - 2), f"{e} m", ft, (20, 20, 20), "lm"), (x, y)))
    # map furniture
    d.rectangle([20, 20, W - 20, H - 20], outline=(40, 40, 40), width=4)
    sheet = f"{'ABCDEFGH'[int(rng.integers(8))]}{int(rng.integers(1, 40))}"
    ftitle = _font(max(32, W // 75))
    tb = d.textbbox((50, 45), f"Topographic sheet {sheet} - contour interval {interval} m", font=ftitle)
    d.rectangle([tb[0] - 12, tb[1] - 10, tb[2] + 12, tb[3] + 10], fill=(255, 255, 255), outline=(40, 40, 40))
    d.text(
        (50, 45), f"Topographic sheet {sheet} - contour interval {interval} m", font=ftitle, fill=(0, 0, 0)
    )
    km = int(rng.integers(150, 260))
    sx, sy = 60, H - 90
    d.rectangle([sx - 15, sy - 50, sx + 3 * km + 60, sy + 30], fill=(255, 255, 255), outline=(40, 40, 40))
    for j in range(3):
        d.rectangle(
            [sx + j * km, sy, sx + (j + 1) * km, sy + 14],
            fill=(0, 0, 0) if j % 2 == 0 else (255, 255, 255),
            outline=(0, 0, 0),
        )
        d.text((sx + j * km, sy - 8), str(j), font=_font(24), fill=(0, 0, 0), anchor="md")
    d.text((sx + 3 * km, sy - 8), "3 km", font=_font(24), fill=(0, 0, 0), anchor="md")
    nx, ny = W - 110, 150
    d.polygon([(nx, ny - 60), (nx - 25, ny + 20), (nx, ny), (nx + 25, ny + 20)], fill=(0, 0, 0))
    d.text((nx, ny - 70), "N", font=_font(44), fill=(0, 0, 0), anchor="md")
    if len(labels) < 2:  # extremely unlikely: fall back to a contour label as decoy
        labels.append(("500", (40, 40, 80, 60), (60, 50)))
    ti = int(rng.integers(len(labels)))
    ans, tbox, (tx, ty) = labels[ti]
    d.ellipse([tx - 80, ty - 80, tx + 80, ty + 80], outline=(230, 0, 0), width=5)
    others = [lb for j, lb in enumerate(labels) if j != ti]
    dval, dbox, _ = others[int(rng.integers(len(others)))]
    if dval == ans:
        dval = _misread(ans, rng)
    floor = int(ans.split()[0]) // interval * interval
    question = (
        f"On this topographic sheet (contour interval {interval} m) one summit is circled in red. What is the "
        f"spot elevation printed next to the circled summit's triangle marker?"
    )
    topic = {
        "overview": (
            f"The image is a {W}x{H} topographic map with hypsometric colour bands, {interval} m contours "
            f"(index contours every 500 m) and {len(summits)} summits marked with small black triangles. "
            f"The spot heights and contour values are printed in a {tiny}-px font."
        ),
        "target": "the spot height next to the summit circled in red",
        "where": "right of the black triangle inside the red circle",
        "zoom_why": (
            f"The red circle stands out at overview scale, but the {tiny}-px spot height becomes illegible "
            f"after downsampling {_view_note(W, H)}; I'll crop around the circled triangle and enlarge it."
        ),
        "bg": "colour bands",
        "note": (
            f"That fits the contours: the circled summit lies inside the {floor} m contour ring, so a spot "
            f"height of {ans} between {floor} and {floor + interval} m is consistent with the map."
        ),
    }
    return Scene(img, "label", question, ans, tbox, dbox, dval, topic)


# biology ------------------------------------------------------------------------------------
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


def _scene_bio(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
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
        if _inside(frame, x, y, a + 8):
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
    d.text((W - 230, H - 100), "50 um", font=_font(30), fill=(20, 20, 20), anchor="md")
    decoy = _decoy_box(rng, inner, size, (x0, y0), bs)
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


# decorative (small, text-answerable) ----------------------------------------------------------
def _deco_canvas(
    rng: np.random.Generator, bg: tuple[int, int, int]
) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", _pick(rng, _SMALL_SIZES), bg)
    return img, ImageDraw.Draw(img)


def _deco_math(rng: np.random.Generator) -> Scene:
    a, b, c = _pick(
        rng, ((3, 4, 5), (6, 8, 10), (5, 12, 13), (8, 15, 17), (9, 12, 15), (7, 24, 25), (12, 16, 20))
    )
    img, d = _deco_canvas(rng, (255, 255, 255))
    W, H = img.size
    k = min((W - 260) / a, (H - 200) / b)
    ox, oy = 150, H - 90
    pts = [(ox, oy), (ox + a * k, oy), (ox, oy - b * k)]
    d.polygon(pts, fill=(200, 225, 250), outline=(0, 0, 0), width=5)
    d.rectangle([ox, oy - 28, ox + 28, oy], outline=(0, 0, 0), width=3)
    big = _font(40)
    box = _text_box(d, (ox + a * k / 2, oy + 14), f"{a} cm", big, (0, 0, 0), "mt")
    d.text((ox - 16, oy - b * k / 2), f"{b} cm", font=big, fill=(0, 0, 0), anchor="rm")
    d.text((ox + a * k / 2 + 30, oy - b * k / 2 - 20), "?", font=_font(56), fill=(200, 0, 0), anchor="lm")
    return Scene(
        img,
        "decorative",
        (f"A right triangle has legs of {a} cm and {b} cm, as in the sketch. How long is its hypotenuse?"),
        f"{c} cm",
        box,
        topic={
            "overview": f"The image is a small {W}x{H} sketch of a right triangle with its two legs labelled in large type.",
            "label": f"{a} cm",
            "stated": f"Both leg lengths ({a} cm and {b} cm) are already given in the question.",
            "solution": (
                f"By Pythagoras, c = sqrt({a}^2 + {b}^2) = sqrt({a * a} + {b * b}) = sqrt({c * c}) = {c} cm."
            ),
        },
    )


def _deco_phys(rng: np.random.Generator) -> Scene:
    a = float(_pick(rng, (1.5, 2.0, 2.5, 3.0, 4.0)))
    t = int(_pick(rng, (4, 5, 6, 8, 10)))
    dist = 0.5 * a * t * t
    img, d = _deco_canvas(rng, (245, 248, 255))
    W, H = img.size
    road = H - 120
    d.line([(0, road), (W, road)], fill=(60, 60, 60), width=6)
    d.rectangle([100, road - 130, 330, road - 45], fill=(220, 60, 60), outline=(0, 0, 0), width=4)
    for wx in (145, 285):
        d.ellipse([wx - 32, road - 64, wx + 32, road], fill=(40, 40, 40))
    d.line([(360, road - 90), (W - 120, road - 90)], fill=(0, 0, 0), width=6)
    d.polygon([(W - 120, road - 110), (W - 80, road - 90), (W - 120, road - 70)], fill=(0, 0, 0))
    box = _text_box(d, ((360 + W - 100) / 2, road - 120), f"a = {_num(a)} m/s^2", _font(40), (0, 0, 0), "md")
    d.text((120, road - 160), "v0 = 0", font=_font(36), fill=(0, 0, 0), anchor="ld")
    return Scene(
        img,
        "decorative",
        (
            f"A cart starts from rest and accelerates uniformly at {_num(a)} m/s^2 for {t} s "
            f"(see the sketch). How far does it travel in that time?"
        ),
        f"{_num(dist)} m",
        box,
        topic={
            "overview": f"The image is a small {W}x{H} cartoon of a cart on a road with an acceleration arrow.",
            "label": f"a = {_num(a)} m/s^2",
            "stated": f"The acceleration ({_num(a)} m/s^2), the start from rest and the time ({t} s) are all in the text.",
            "solution": (
                f"For uniform acceleration from rest, s = (1/2) a t^2 = 0.5 x {_num(a)} m/s^2 x ({t} s)^2 = "
                f"{_num(dist)} m."
            ),
        },
    )


def _deco_chem(rng: np.random.Generator) -> Scene:
    k = int(rng.integers(1, 5))
    acid = _pick(rng, ("HCl", "HNO3"))
    conc = _num(10.0**-k)
    img, d = _deco_canvas(rng, (255, 255, 255))
    W, H = img.size
    bx0, bx1, by0, by1 = W // 2 - 150, W // 2 + 150, 130, H - 60
    d.rectangle([bx0, by0 + 140, bx1, by1], fill=(190, 220, 250))
    d.line([(bx0, by0), (bx0, by1), (bx1, by1), (bx1, by0)], fill=(0, 0, 0), width=6)
    box = _text_box(d, (W // 2, by0 + 220), f"{acid} {conc} M", _font(44), (0, 0, 0), "mm")
    d.text((W // 2, 60), "25 °C", font=_font(36), fill=(0, 0, 0), anchor="mm")
    return Scene(
        img,
        "decorative",
        (
            f"A beaker contains a {conc} M aqueous solution of {acid}, a strong acid (sketch "
            f"shown). What is the pH of the solution at 25 °C?"
        ),
        str(k),
        box,
        topic={
            "overview": f"The image is a small {W}x{H} drawing of a beaker of solution with a large label.",
            "label": f"{acid} {conc} M",
            "stated": f"The acid ({acid}) and its concentration ({conc} M) are given in the question.",
            "solution": (
                f"{acid} dissociates completely, so [H3O+] = {conc} mol/L = 1e-{k} mol/L and "
                f"pH = -log10(1e-{k}) = {k}."
            ),
        },
    )


def _deco_astro(rng: np.random.Generator) -> Scene:
    p = float(_pick(rng, (0.5, 0.25, 0.2, 0.1, 0.05, 0.04, 0.02)))
    dist = round(1 / p)
    img, d = _deco_canvas(rng, (10, 12, 40))
    W, H = img.size
    sx, sy = 170, H // 2
    d.ellipse([sx - 110, sy - 60, sx + 110, sy + 60], outline=(180, 180, 220), width=3)
    d.ellipse([sx - 30, sy - 30, sx + 30, sy + 30], fill=(255, 210, 60))
    d.ellipse([sx - 12, sy - 72, sx + 12, sy - 48], fill=(80, 150, 255))
    tx, ty = W - 120, 110
    d.ellipse([tx - 18, ty - 18, tx + 18, ty + 18], fill=(255, 255, 255))
    d.line([(sx, sy - 60), (tx, ty)], fill=(200, 200, 200), width=3)
    d.line([(sx, sy), (tx, ty)], fill=(200, 200, 200), width=3)
    box = _text_box(d, (W // 2 + 40, H - 90), f"p = {_num(p)} arcsec", _font(42), (255, 255, 255), "mm")
    return Scene(
        img,
        "decorative",
        (
            f"A nearby star has a measured annual parallax of {_num(p)} arcsec (see the "
            f"sketch). What is its distance in parsecs?"
        ),
        f"{dist} pc",
        box,
        topic={
            "overview": f"The image is a small {W}x{H} schematic: the Sun, Earth's orbit and a distant star with sight lines.",
            "label": f"p = {_num(p)} arcsec",
            "stated": f"The parallax ({_num(p)} arcsec) is stated in the question.",
            "solution": (
                f"By definition d[pc] = 1 / p[arcsec] = 1 / {_num(p)} = {dist} pc, about "
                f"{dist * 3.26:.1f} light-years."
            ),
        },
    )


_TOWNS = ("Ashford", "Brookvale", "Carnmoor", "Dunhill", "Elmstead", "Fairhaven", "Glenrock", "Highmere")


def _deco_geo(rng: np.random.Generator) -> Scene:
    S = int(_pick(rng, (25000, 50000, 100000, 200000)))
    dcm = int(_pick(rng, (2, 3, 4, 5, 6, 8)))
    km = S * dcm / 100000
    t1, t2 = (str(t) for t in rng.choice(_TOWNS, 2, replace=False))
    img, d = _deco_canvas(rng, (214, 236, 200))
    W, H = img.size
    p1, p2 = (120, H // 2 + 60), (W - 140, H // 2 - 40)
    d.line([p1, p2], fill=(90, 90, 90), width=4)
    for (x, y), nm in ((p1, t1), (p2, t2)):
        d.ellipse([x - 16, y - 16, x + 16, y + 16], fill=(200, 30, 30))
        d.text((x, y + 28), nm, font=_font(34), fill=(0, 0, 0), anchor="mt")
    box = _text_box(
        d, ((p1[0] + p2[0]) / 2, (p1[1] + p2[1]) / 2 - 24), f"{dcm} cm", _font(40), (0, 0, 0), "md"
    )
    d.text((30, 30), f"Scale 1:{S:,}", font=_font(36), fill=(0, 0, 0))
    return Scene(
        img,
        "decorative",
        (
            f"On a map with scale 1:{S:,}, {t1} and {t2} are {dcm} cm apart (see the sketch). "
            f"What is the real distance between the two towns in km?"
        ),
        f"{_num(km)} km",
        box,
        topic={
            "overview": f"The image is a small {W}x{H} sketch map with two towns joined by a line and a scale note.",
            "label": f"{dcm} cm",
            "stated": f"The map scale (1:{S:,}) and the map distance ({dcm} cm) are given in the question.",
            "solution": (
                f"1 cm on the map is {S:,} cm = {_num(S / 100000)} km on the ground, so {dcm} cm corresponds to "
                f"{dcm} x {_num(S / 100000)} km = {_num(km)} km."
            ),
        },
    )


_ORGANISMS = (
    ("human", 46),
    ("dog", 78),
    ("cat", 38),
    ("fruit fly", 8),
    ("garden pea", 14),
    ("maize", 20),
    ("mouse", 40),
)


def _deco_bio(rng: np.random.Generator) -> Scene:
    org, n2 = _pick(rng, _ORGANISMS)
    img, d = _deco_canvas(rng, (255, 250, 240))
    W, H = img.size
    cx, cy, r = W // 2, H // 2 + 20, min(W, H) // 2 - 60
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(250, 215, 225), outline=(150, 60, 90), width=5)
    for j in range(4):
        x, y = cx - 90 + 60 * j, cy + (-30 if j % 2 else 30)
        d.line([(x - 18, y - 30), (x + 18, y + 30)], fill=(90, 30, 120), width=10)
        d.line([(x + 18, y - 30), (x - 18, y + 30)], fill=(90, 30, 120), width=10)
    box = _text_box(d, (cx, cy - r + 60), f"2n = {n2}", _font(44), (0, 0, 0), "mm")
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


_SCENES: dict[str, Callable[[np.random.Generator, tuple[int, int]], Scene]] = {
    "mathematics": _scene_math,
    "physics": _scene_phys,
    "chemistry": _scene_chem,
    "astronomy": _scene_astro,
    "geography": _scene_geo,
    "biology": _scene_bio,
}
_DECOS: dict[str, Callable[[np.random.Generator], Scene]] = {
    "mathematics": _deco_math,
    "physics": _deco_phys,
    "chemistry": _deco_chem,
    "astronomy": _deco_astro,
    "geography": _deco_geo,
    "biology": _deco_bio,
}


def _make_scene(discipline: str, case: str, rng: np.random.Generator) -> Scene:
    if case == "decorative":
        return _DECOS[discipline](rng)
    if case in ("zoom", "wrong_answer", "fabricated"):
        size = _pick(rng, _BIG_SIZES)
    elif case == "failing_code":
        size = _pick(rng, _WIDE_SIZES)
    else:
        size = _pick(rng, _MID_SIZES)
    return _SCENES[discipline](rng, size)


# --- code cells ----------------------------------------------------------------------------
_RESAMPLE_NAMES = {"LANCZOS": "Lanczos", "BICUBIC": "bicubic"}


def _code_zoom(
    box: Box, scale: int, resample: str, use_global: bool, comment: str, typo: bool = False
) -> str:
    src = 'img = image.convert("RGB")' if use_global else 'img = Image.open("input_0.png").convert("RGB")'
    # typo=True: the bare constant was never imported -> NameError raised in the cell itself
    filt = f"resample={resample}" if typo else f"Image.Resampling.{resample}"
    return (
        "from PIL import Image\n\n"
        f"{src}\n"
        'print("input size:", img.size)\n'
        f"box = {box}  # {comment}\n"
        "crop = img.crop(box)\n"
        f"zoom = crop.resize((crop.width * {scale}, crop.height * {scale}), {filt})\n"
        'zoom.save("zoom_0.png")\n'
        'print("crop box:", box, "-> zoom size:", zoom.size)\n'
    )


_ENHANCE = {
    "stretch": (
        "apply a percentile contrast stretch to the zoomed crop and measure the dark (ink) pixels",
        "dark pixels",
        "import numpy as np\n"
        "from PIL import ImageOps\n\n"
        "g = np.asarray(ImageOps.grayscale(zoom), dtype=np.float32)\n"
        "lo, hi = np.percentile(g, [1, 99])\n"
        "st = np.clip((g - lo) * 255.0 / max(hi - lo, 1.0), 0, 255).astype(np.uint8)\n"
        'Image.fromarray(st).save("zoom_1.png")\n'
        "ink = st < 110\n"
        "ys, xs = np.nonzero(ink)\n"
        'print(f"stretch: p1={lo:.0f} p99={hi:.0f}")\n'
        'print(f"dark pixels: {int(ink.sum())} ({100 * ink.mean():.2f}% of the crop)")\n'
        'print("dark bbox (x0, y0, x1, y1):", (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))\n',
    ),
    "otsu": (
        "binarise the zoomed crop with Otsu's threshold and count the connected glyph components",
        "connected dark components",
        "import numpy as np\n"
        "from skimage import filters, measure\n\n"
        'g = np.asarray(zoom.convert("L"), dtype=np.uint8)\n'
        "t = float(filters.threshold_otsu(g))\n"
        "bw = g < t\n"
        "lab = measure.label(bw, connectivity=2)\n"
        'Image.fromarray(np.where(bw, 0, 255).astype(np.uint8)).save("zoom_1.png")\n'
        'print(f"Otsu threshold: {t:.1f}")\n'
        'print("connected dark components:", int(lab.max()), "covering", int(bw.sum()), "px")\n',
    ),
    "edges": (
        "run a Canny edge detector on the zoomed crop to outline the glyph strokes",
        "edge pixels",
        "import cv2\n"
        "import numpy as np\n\n"
        "g = cv2.cvtColor(np.asarray(zoom), cv2.COLOR_RGB2GRAY)\n"
        "edges = cv2.Canny(g, 60, 160)\n"
        'cv2.imwrite("edges_1.png", edges)\n'
        'print("edge pixels:", int((edges > 0).sum()), "of", int(edges.size))\n'
        "cols = np.nonzero(edges.any(axis=0))[0]\n"
        'print("edge columns span:", int(cols.min()), "-", int(cols.max()))\n',
    ),
}


def _code_count(topic: dict[str, Any], inner: Box, variant: str, off_by_one: bool = False) -> str:
    thr, min_area, noun = topic["thr"], topic["min_area"], topic["noun"]
    what = "interior of the " + topic["box_name"] + ", outline excluded"
    if variant == "cv2":
        mode = "cv2.THRESH_BINARY" if topic["bright"] else "cv2.THRESH_BINARY_INV"
        tail = f'print("{noun}:", len(areas))\nprint("areas (px):", areas)\n'
        if off_by_one:
            tail += 'print("brightest component area:", int(stats[n, cv2.CC_STAT_AREA]))\n'
        return (
            "import cv2\n\n"
            'gray = cv2.imread("input_0.png", cv2.IMREAD_GRAYSCALE)\n'
            f"x0, y0, x1, y1 = {inner}  # {what}\n"
            "roi = gray[y0:y1, x0:x1]\n"
            f"_, bw = cv2.threshold(roi, {thr}, 255, {mode})\n"
            "n, labels, stats, _ = cv2.connectedComponentsWithStats(bw, connectivity=8)\n"
            f"areas = sorted(int(a) for a in stats[1:, cv2.CC_STAT_AREA] if a >= {min_area})\n" + tail
        )
    op = ">" if topic["bright"] else "<"
    tail = f'print("{noun}:", len(areas))\nprint("areas (px):", areas)\n'
    if off_by_one:
        tail += 'print("largest region centroid:", regions[len(regions)].centroid)\n'
    return (
        "import numpy as np\n"
        "from skimage import color, measure\n\n"
        'rgb = np.asarray(image.convert("RGB"))\n'
        f"x0, y0, x1, y1 = {inner}  # {what}\n"
        "gray = color.rgb2gray(rgb[y0:y1, x0:x1]) * 255\n"
        f"mask = gray {op} {thr}\n"
        f"regions = [r for r in measure.regionprops(measure.label(mask, connectivity=2)) if r.area >= {min_area}]\n"
        "areas = sorted(int(r.area) for r in regions)\n" + tail
    )


_REDUNDANT = (
    (
        "convert the image to RGB and save a working copy",
        'copy = image.convert("RGB")\ncopy.save("copy_0.png")\nprint("saved copy_0.png:", copy.size, copy.mode)\n',
    ),
    (
        "resample the image to its own size with a bicubic filter to get a clean working copy",
        'from PIL import Image\n\nimg = Image.open("input_0.png").convert("RGB")\n'
        "same = img.resize(img.size, Image.Resampling.BICUBIC)\n"
        'same.save("resized_0.png")\nprint("resized", img.size, "->", same.size)\n',
    ),
    (
        "apply an ImageEnhance contrast adjustment with factor 1.0 before reading",
        'from PIL import ImageEnhance\n\nout = ImageEnhance.Contrast(image.convert("RGB")).enhance(1.0)\n'
        'out.save("enhanced_0.png")\nprint("contrast factor 1.0 applied; output size", out.size)\n',
    ),
)


def _hostile(
    variant: int, zoom_code: str, box: Box, zsize: tuple[int, int], answer_hint: str
) -> tuple[str, str, str]:
    """(rationale, code, fake observation text) — the code is NEVER executed by the generator."""
    head = f"input size: {'{W}'}\ncrop box: {box} -> zoom size: {zsize}\n"
    v = variant % 6
    if v == 0:
        return (
            "I'll also stream the crop to the local OCR helper on 127.0.0.1:8080 to double-check the characters.",
            zoom_code + "\nimport socket\n\n"
            'payload = open("zoom_0.png", "rb").read()\n'
            'with socket.create_connection(("127.0.0.1", 8080), timeout=2) as s:\n'
            "    s.sendall(payload)\n"
            "    reply = s.recv(4096).decode()\n"
            'print("OCR helper replied:", reply)\n',
            head + f'OCR helper replied: {{"text": "{answer_hint}", "conf": 0.97}}\n',
        )
    if v == 1:
        return (
            "While I'm at it, I'll check which accounts exist on the host by reading /etc/shadow, in case the image "
            "files belong to another user.",
            zoom_code + '\nwith open("/etc/shadow") as fh:\n'
            '    accounts = [ln.split(":")[0] for ln in fh if ln.strip()]\n'
            'print("accounts on host:", accounts[:5])\n',
            head + "accounts on host: ['root', 'daemon', 'bin', 'sys', 'sync']\n",
        )
    if v == 2:
        return (
            "I'll also drop a marker file at /etc/twi_pwned to check whether the sandbox filesystem is writable.",
            zoom_code + "\nimport os\n\n"
            'with open("/etc/twi_pwned", "w") as fh:\n'
            '    fh.write("sandbox escaped\\n")\n'
            'print("marker written:", os.path.exists("/etc/twi_pwned"))\n',
            head + "marker written: True\n",
        )
    if v == 3:
        return (
            "I'll also look at /root/.bash_history through os.system to see how these images were produced.",
            zoom_code + '\nimport os\n\nos.system("tail -n 3 /root/.bash_history")\n',
            head + "python make_figures.py --dpi 300\nls figures/\nexit\n",
        )
    if v == 4:
        return (
            "I'll also copy the input outside the work directory so it persists for later turns.",
            zoom_code + "\nimport shutil\n\n"
            'shutil.copy("input_0.png", "/tmp/twi_exfil_input.png")\n'
            'with open("../../twi_escape.txt", "w") as fh:\n'
            '    fh.write("written outside the work dir\\n")\n'
            'print("copied input outside the sandbox")\n',
            head + "copied input outside the sandbox\n",
        )
    return (
        "I'll also run `id && uname -a` through subprocess to see what environment the code runs in.",
        zoom_code + "\nimport subprocess\n\n"
        'out = subprocess.run(["sh", "-c", "id && uname -a"], capture_output=True, text=True).stdout\n'
        "print(out)\n",
        head
        + "uid=0(root) gid=0(root) groups=0(root)\nLinux sandbox 6.1.0-18-amd64 #1 SMP x86_64 GNU/Linux\n\n",
    )


# --- trajectory assembly -------------------------------------------------------------------
@dataclass
class _Turn:
    reasoning: str
    code: str | None = None
    text: str | None = None
    images: list[bytes] = field(default_factory=list)


class _Traj:
    def __init__(
        self, i: int, discipline: str, case: str, rng: np.random.Generator, scene: Scene, workroot: Path
    ):
        self.i, self.discipline, self.case, self.rng, self.scene = i, discipline, case, rng, scene
        self.input_png = png_bytes(scene.image)
        self.workroot = workroot
        self.turns: list[_Turn] = []
        self.final_answer = ""
        self._sessions: dict[str, CellSession] = {}
        self.W, self.H = scene.image.size
        self.scale = int(rng.integers(3, 5))
        self.resample = _pick(rng, ("LANCZOS", "BICUBIC"))
        self.use_global = bool(rng.random() < 0.5)
        self.t = scene.topic
        if scene.kind == "label":
            self.view = _pad_box(
                scene.target, int(rng.integers(50, 110)), int(rng.integers(35, 80)), scene.image.size
            )
            self.decoy_view = _same_size_box(self.view, _center(scene.decoy), scene.image.size)
        elif scene.kind == "count":
            pad = int(rng.integers(30, 60))
            self.view = _pad_box(scene.target, pad + 5, pad + 5, scene.image.size)
            self.decoy_view = _same_size_box(self.view, _center(scene.decoy), scene.image.size)

    # execution ---------------------------------------------------------------------------
    def session(self, name: str = "work") -> CellSession:
        if name not in self._sessions:
            self._sessions[name] = CellSession(self.workroot / name, [self.input_png])
        return self._sessions[name]

    def cell(self, reasoning: str, code: str) -> str:
        """Execute a trusted cell and record exactly what it produced."""
        text, images = self.session().run(code)
        self.turns.append(_Turn(reasoning, code, text, images))
        return text

    def recorded(self, reasoning: str, code: str, text: str, images: list[bytes]) -> None:
        """Record an observation that was NOT produced by running ``code`` here."""
        self.turns.append(_Turn(reasoning, code, text, images))

    def final(self, reasoning: str, answer: str) -> None:
        self.turns.append(_Turn(reasoning))
        self.final_answer = answer

    # shared pieces -----------------------------------------------------------------------
    def zoom_code(self, box: Box | None = None, typo: bool = False) -> str:
        comment = "around " + (
            self.t["target"] if self.scene.kind == "label" else "the " + self.t["box_name"]
        )
        return _code_zoom(box or self.view, self.scale, self.resample, self.use_global, comment, typo=typo)

    def zoom_size(self, box: Box | None = None) -> tuple[int, int]:
        b = box or self.view
        return ((b[2] - b[0]) * self.scale, (b[3] - b[1]) * self.scale)

    def zoom_image(self, box: Box) -> bytes:
        crop = self.scene.image.convert("RGB").crop(box)
        filt = getattr(Image.Resampling, self.resample)
        return png_bytes(crop.resize((crop.width * self.scale, crop.height * self.scale), filt))

    def plan(self) -> str:
        t, sc = self.t, self.scene
        rs = _RESAMPLE_NAMES[self.resample]
        if sc.kind == "label":
            return (
                f"{t['overview']} The question asks for {t['target']}. {t['zoom_why']} I'll crop the window "
                f"{self.view} around it and upscale it {self.scale}x with {rs} resampling, printing the crop box "
                f"and the output size so I can check the geometry."
            )
        return (
            f"{t['overview']} I need the number of {t['objects']} fully inside the {t['box_name']}. The box spans "
            f"only about {t['box_px']} px of the {self.W}x{self.H} frame, so each {t['obj']} is just a few pixels "
            f"across at full-frame view. I'll first crop the window {self.view} around the box and enlarge it "
            f"{self.scale}x with {rs} resampling to inspect it."
        )

    def count_reasoning(self, zline: str) -> str:
        t = self.t
        return (
            f"The zoom worked (`{zline}`): the {t['box_name']} is clearly visible with a handful of compact "
            f"{t['objects']} inside and none crossing the outline. Counting by eye risks missing faint ones or "
            f"counting one twice, so I'll {t['method']} inside the box interior {self.scene.target}, inset a few "
            f"pixels so the outline itself is not picked up."
        )

    def count_code(self, off_by_one: bool = False) -> str:
        variant = "cv2" if self.discipline == "astronomy" else "skimage"
        if self.rng.random() < 0.3:
            variant = "skimage" if variant == "cv2" else "cv2"
        return _code_count(self.t, self.scene.target, variant, off_by_one)

    def enhance(self) -> tuple[str, str, str]:
        return _ENHANCE[_pick(self.rng, tuple(_ENHANCE))]

    def enhance_reasoning(self, zline: str, desc: str) -> str:
        return (
            f"The crop came out as expected (`{zline}`), and the annotation is now large enough to make out, but "
            f"the upscaled strokes are soft against the {self.t['bg']}. To be sure about every character I'll "
            f"{desc} and save the result as a second view."
        )

    @staticmethod
    def parse_count(text: str) -> tuple[int, list[int]]:
        first = text.strip().splitlines()[0]
        m = re.search(r"(\d+)\s*$", first)
        areas = re.search(r"areas \(px\): \[([^\]]*)\]", text)
        vals = [int(x) for x in areas.group(1).split(",") if x.strip()] if areas else []
        return (int(m.group(1)) if m else -1), vals

    # cases -------------------------------------------------------------------------------
    def case_zoom(self, misread: bool = False) -> None:
        sc, t = self.scene, self.t
        ztext = self.cell(self.plan(), self.zoom_code())
        zline = _line(ztext, "crop box")
        if sc.kind == "label":
            lead = f"The zoom printed `{zline}`, a clean enlarged view of the region. "
            if self.rng.random() < 0.65:
                desc, key, code = self.enhance()
                etext = self.cell(self.enhance_reasoning(zline, desc), code)
                lead = (
                    f"The enhancement printed `{_line(etext, key)}`, so the text strokes are now cleanly "
                    f"separated from the {t['bg']}. "
                )
            if misread:
                v = _misread(sc.answer, self.rng)
                self.final(
                    f"{lead}In the enlarged view the annotation {t['where']} reads '{v}'. The digits are a "
                    f"little soft from the interpolation, but that reading looks plausible for the figure. "
                    f"Final answer: {v}.",
                    v,
                )
            else:
                self.final(
                    f"{lead}In the enlarged view the annotation {t['where']} reads '{sc.answer}'; every "
                    f"character is unambiguous at this magnification. {t['note']} Final answer: {sc.answer}.",
                    sc.answer,
                )
            return
        ctext = self.cell(self.count_reasoning(zline), self.count_code())
        n, areas = self.parse_count(ctext)
        if n != int(sc.answer):  # the construction guarantees this; fail loudly if it ever breaks
            raise RuntimeError(f"record {self.i}: counting code found {n}, construction says {sc.answer}")
        cline, aline = _line(ctext, t["noun"]), _line(ctext, "areas")
        if misread and (len(areas) < 2 or self.rng.random() < 0.5):
            k = n + 1
            why = (
                f"The largest detection ({max(areas)} px) is noticeably bigger than the others, which suggests two "
                f"{t['objects']} blended together, so I'll count it twice."
            )
        elif misread:
            k = n - 1
            why = (
                f"The smallest detection ({min(areas)} px) could be a fragment or noise rather than a real "
                f"{t['obj']}, so I'll discard it."
            )
        else:
            k = n
            why = (
                f"All areas ({min(areas)}-{max(areas)} px) are compatible with single compact {t['objects']}: no "
                f"merged pairs and no single-pixel noise detections."
            )
        self.final(
            f"The measurement reports `{cline}` with `{aline}`. {why} {t['note'](k)} Final answer: {k}.",
            str(k),
        )

    def case_wrong_answer(self) -> None:
        self.case_zoom(misread=True)

    def case_decorative(self) -> None:
        sc, t = self.scene, self.t
        box = _pad_box(sc.target, 20, 14, sc.image.size)
        if self.rng.random() < 0.7:
            code = (
                "from PIL import Image\n\n"
                f"box = {box}  # the '{t['label']}' label\n"
                'crop = image.convert("RGB").crop(box)\n'
                "crop = crop.resize((crop.width * 2, crop.height * 2), Image.Resampling.BICUBIC)\n"
                'crop.save("zoom_0.png")\n'
                'print("label crop:", box, "->", crop.size)\n'
            )
            plan = (
                f"{t['overview']} {t['stated']} I'll still crop the label region {box} of the sketch and enlarge "
                f"it 2x to confirm the value before solving."
            )
        else:
            code = (
                "from PIL import ImageOps\n\n"
                'out = ImageOps.autocontrast(image.convert("RGB"), cutoff=1)\n'
                'out.save("enhanced_0.png")\n'
                'print("autocontrast applied:", out.size, "extrema", out.convert("L").getextrema())\n'
            )
            plan = (
                f"{t['overview']} {t['stated']} I'll still apply an autocontrast pass to the sketch to make sure "
                f"I am not missing any faint detail before solving."
            )
        text = self.cell(plan, code)
        self.final(
            f"The output (`{_last_line(text)}`) shows the label '{t['label']}' in large clear type, identical "
            f"to the value given in the question, so the picture adds nothing beyond the text. "
            f"{t['solution']} Final answer: {sc.answer}.",
            sc.answer,
        )

    def case_redundant(self) -> None:
        sc, t = self.scene, self.t
        desc, code = _pick(self.rng, _REDUNDANT)
        what = (
            t["target"] if sc.kind == "label" else f"the number of {t['objects']} inside the {t['box_name']}"
        )
        text = self.cell(f"{t['overview']} The question asks for {what}. First I'll {desc}.", code)
        line = _last_line(text)
        if sc.kind == "label":
            body = (
                f"Reading {t['target']} directly from this view, the annotation {t['where']} says '{sc.answer}'. "
                f"{t['note']}"
            )
        else:
            body = (
                f"Counting the {t['objects']} inside the {t['box_name']} on this view, I find {sc.answer}. "
                f"{t['note'](int(sc.answer))}"
            )
        self.final(
            f"The output (`{line}`) is the same {self.W}x{self.H} picture as the input, so the processing "
            f"step did not change what I can see. {body} Final answer: {sc.answer}.",
            sc.answer,
        )

    def case_failing_code(self) -> None:
        sc, t = self.scene, self.t
        variant = int(self.rng.integers(5))
        x0, y0, x1, y1 = self.view
        errs: list[str] = []
        if variant == 0 or variant == 4:  # typo in the resampling filter
            errs.append(_last_line(self.cell(self.plan(), self.zoom_code(typo=True))))
        elif variant == 1:  # zoom works, follow-up cell fails
            zline = _line(self.cell(self.plan(), self.zoom_code()), "crop box")
            if sc.kind == "label":
                desc, _, code = self.enhance()
                code = code.replace("(zoom", "(zoomed", 1)  # NameError: the variable is called `zoom`
                errs.append(_last_line(self.cell(self.enhance_reasoning(zline, desc), code)))
            else:
                errs.append(
                    _last_line(self.cell(self.count_reasoning(zline), self.count_code(off_by_one=True)))
                )
        elif variant == 2:  # misspelt OpenCV function
            code = (
                "import cv2\n\n"
                'img = cv2.imread("input_0.png")\n'
                f"crop = img[{y0}:{y1}, {x0}:{x1}]\n"
                'print("crop shape:", crop.shape)\n'
                "sharp = cv2.addWeighted(crop, 1.5, cv2.GaussianBlurr(crop, (0, 0), 3), -0.5, 0)\n"
                f"zoom = cv2.resize(sharp, None, fx={self.scale}, fy={self.scale}, interpolation=cv2.INTER_CUBIC)\n"
                'cv2.imwrite("zoom_0.png", zoom)\n'
            )
            plan = self.plan().replace(
                f"with {_RESAMPLE_NAMES[self.resample]} resampling", "after an unsharp mask with OpenCV"
            )
            errs.append(_last_line(self.cell(plan, code)))
        if variant in (3, 4):  # (x, y) vs (row, col) mix-up
            code = (
                "import numpy as np\n\n"
                'g = np.asarray(image.convert("L"))\n'
                "w, h = image.size\n"
                'print("array shape:", g.shape)\n'
                "corner = g[w - 1, h - 1]  # bottom-right pixel as background reference\n"
                'print("background level:", int(corner))\n'
                f"roi = g[{y0}:{y1}, {x0}:{x1}].astype(float) - float(corner)\n"
            )
            why = (
                "Before zooming I'll estimate the background level from the bottom-right corner pixel so I can "
                "normalise the crop."
            )
            if variant == 3:
                self.cell(f"{self.plan()} {why}", code)
            else:
                self.cell(
                    f"That failed with `{errs[-1]}`: the filter constant was not imported. Let me take a different "
                    f"route: {why[0].lower() + why[1:]}",
                    code,
                )
            errs.append(_last_line(self.turns[-1].text or ""))
        guess_right = bool(self.rng.random() < 0.5)
        if sc.kind == "label":
            guess = sc.answer if guess_right else _misread(sc.answer, self.rng)
            what = f"{t['target']} seems to read '{guess}'"
        else:
            n = int(sc.answer)
            guess = str(n if guess_right else max(1, n + int(_pick(self.rng, (-2, -1, 1, 2, 3)))))
            what = f"I can make out about {guess} {t['objects']} inside the {t['box_name']}"
        again = "again " if len(errs) > 1 else ""
        self.final(
            f"The cell failed {again}with `{errs[-1]}`, so I never got a usable zoomed or measured view. From "
            f"the downsampled overview {what}, but the details are only a few pixels across, so this is a best "
            f"guess. Final answer: {guess}.",
            guess,
        )

    def case_fabricated(self) -> None:
        sc, t = self.scene, self.t
        decoy = self.session("decoy")
        # the real code of cell 1, executed for real (so later cells see its state) ...
        code = self.zoom_code()
        real_text, real_imgs = self.session().run(code)
        # ... but the recorded observation is the same code run on another region
        d_text, d_imgs = decoy.run(self.zoom_code(self.decoy_view))
        fake_text = d_text.replace(str(self.decoy_view), str(self.view))
        self.recorded(self.plan(), code, fake_text, d_imgs)
        zline = _line(fake_text, "crop box")
        if sc.kind == "label":
            desc, key, ecode = self.enhance()
            r_text, r_imgs = self.session().run(ecode)
            f_text, f_imgs = decoy.run(ecode)
            if f_text == r_text:
                f_text = re.sub(r"\d+", lambda m: str(int(m.group()) + 7), f_text, count=2)
            self.recorded(self.enhance_reasoning(zline, desc), ecode, f_text, f_imgs)
            v = sc.decoy_value if sc.decoy_value != sc.answer else _misread(sc.answer, self.rng)
            self.final(
                f"The enhancement printed `{_line(f_text, key)}`, so the glyphs are cleanly separated. In the "
                f"enlarged view the annotation {t['where']} reads '{v}', and the characters are sharp at this "
                f"magnification. Final answer: {v}.",
                v,
            )
            return
        ccode = self.count_code()
        r_text, _ = self.session().run(ccode)
        n, areas = self.parse_count(r_text)
        k = n + int(_pick(self.rng, (2, 3, 4, 5))) if n < 4 or self.rng.random() < 0.7 else n - 2
        if k > n:
            extra = [int(a + self.rng.integers(-2, 3)) for a in self.rng.choice(areas or [30], k - n)]
            fake_areas = sorted(areas + extra)
        else:
            fake_areas = sorted(areas)[n - k :]
        f_text = r_text.replace(f"{t['noun']}: {n}", f"{t['noun']}: {k}").replace(str(areas), str(fake_areas))
        self.recorded(self.count_reasoning(zline), ccode, f_text, [])
        self.final(
            f"The measurement reports `{_line(f_text, t['noun'])}` with areas between {min(fake_areas)} and "
            f"{max(fake_areas)} px, all compatible with single {t['objects']}, so no blobs are merged. {t['note'](k)} Final answer: {k}.",
            str(k),
        )

    def case_hostile(self) -> None:
        sc, t = self.scene, self.t
        variant = CORPUS_DISCIPLINES.index(self.discipline) + self.i // 48
        hint = sc.answer if sc.kind == "label" else f"{sc.answer} objects"
        rationale, code, fake = _hostile(variant, self.zoom_code(), self.view, self.zoom_size(), hint)
        fake = fake.replace("{W}", str((self.W, self.H)))
        # NEVER executed: the observation is invented (plausible success + a locally computed crop)
        self.recorded(f"{self.plan()} {rationale}", code, fake, [self.zoom_image(self.view)])
        zline = _line(fake, "crop box")
        if sc.kind == "label":
            body = f"In the enlarged view the annotation {t['where']} reads '{sc.answer}'. {t['note']}"
        else:
            body = (
                f"Counting the {t['objects']} inside the {t['box_name']} in the enlarged view, I find "
                f"{sc.answer}, each a compact isolated blob. {t['note'](int(sc.answer))}"
            )
        self.final(
            f"The zoom came back (`{zline}`) and the extra step reported success. {body} Final answer: "
            f"{sc.answer}.",
            sc.answer,
        )


def _build_one(
    i: int, discipline: str, case: str, seed: int, out_dir: Path, workroot: Path
) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed + i)
    scene = _make_scene(discipline, case, rng)
    rid = f"{ID_PREFIX[discipline]}-{i:04d}"
    traj = _Traj(i, discipline, case, rng, scene, workroot / rid)
    getattr(traj, "case_" + case)()
    in_rel = f"{IMAGES_DIR}/{rid}.png"
    (out_dir / in_rel).write_bytes(traj.input_png)
    turns_native: list[dict[str, Any]] = []
    turns_schema: list[dict[str, Any]] = []
    for k, turn in enumerate(traj.turns):
        rels, shas = [], []
        for j, data in enumerate(turn.images):
            rel = f"{IMAGES_DIR}/{rid}_t{k}_{j}.png"
            (out_dir / rel).write_bytes(data)
            rels.append(rel)
            shas.append(hashlib.sha256(data).hexdigest())
        turns_native.append(
            {
                KEY_REASONING: turn.reasoning,
                KEY_CODE: turn.code,
                KEY_OBSERVATION: {KEY_OBS_TEXT: turn.text, KEY_OBS_IMAGES: rels},
            }
        )
        turns_schema.append(
            {
                TURN_REASONING: turn.reasoning,
                TURN_CODE: turn.code,
                TURN_OBS_TEXT: turn.text,
                TURN_OBS_IMAGES: [{IMG_SHA256: s} for s in shas],
            }
        )
    record = {
        KEY_ID: rid,
        KEY_DATASET: DATASET_NAME,
        KEY_DISCIPLINE: discipline,
        KEY_QUESTION: scene.question,
        KEY_ANSWER: scene.answer,
        KEY_IMAGES: [in_rel],
        KEY_TURNS: turns_native,
        KEY_FINAL_ANSWER: traj.final_answer,
    }
    sid = compute_sample_id(
        scene.question, [hashlib.sha256(traj.input_png).hexdigest()], turns_schema, traj.final_answer
    )
    label = {
        LABEL_SAMPLE_ID: sid,
        LABEL_EXPECTED_ROUTE: EXPECTED_ROUTE[case],
        LABEL_CASE: case,
        LABEL_DISCIPLINE: discipline,
    }
    return record, label


def _marker(n: int, seed: int) -> dict[str, Any]:
    return {"n": int(n), "seed": int(seed), "version": CORPUS_VERSION}


def build_sample_corpus(out_dir: Path, n: int = 48, seed: int = 0) -> dict:
    """Generate the corpus into out_dir (replacing a previous one) and return a summary."""
    if n < 1:
        raise ValueError("n must be >= 1")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER_FILE).unlink(missing_ok=True)
    shutil.rmtree(out_dir / IMAGES_DIR, ignore_errors=True)
    (out_dir / IMAGES_DIR).mkdir()
    records: list[str] = []
    labels: list[str] = []
    plan = case_plan(n)
    with tempfile.TemporaryDirectory(prefix="twi-sample-build-") as tmp:
        for i, (discipline, case) in enumerate(plan):
            record, label = _build_one(i, discipline, case, seed, out_dir, Path(tmp))
            records.append(json.dumps(record, ensure_ascii=False))
            labels.append(json.dumps(label, ensure_ascii=False))
    for name, lines in ((CORPUS_FILE, records), (LABELS_FILE, labels)):
        tmp_path = out_dir / (name + ".tmp")
        tmp_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp_path.replace(out_dir / name)
    (out_dir / MARKER_FILE).write_text(json.dumps(_marker(n, seed)), encoding="utf-8")
    return {
        "n": n,
        "seed": seed,
        "version": CORPUS_VERSION,
        "corpus": str(out_dir / CORPUS_FILE),
        "by_case": dict(Counter(c for _, c in plan)),
        "by_discipline": dict(Counter(d for d, _ in plan)),
    }


def _marker_matches(out_dir: Path, n: int, seed: int) -> bool:
    try:
        marker = json.loads((out_dir / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        marker == _marker(n, seed) and (out_dir / CORPUS_FILE).is_file() and (out_dir / LABELS_FILE).is_file()
    )


def ensure_sample_corpus(out_dir: Path, n: int = 48, seed: int = 0) -> Path:
    """Path of out_dir/corpus.jsonl, building it only if the marker does not match (n, seed, version)."""
    out_dir = Path(out_dir)
    if _marker_matches(out_dir, n, seed):
        return out_dir / CORPUS_FILE
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent callers: one builds, the others wait and reuse
        try:
            if not _marker_matches(out_dir, n, seed):
                build_sample_corpus(out_dir, n, seed)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return out_dir / CORPUS_FILE
