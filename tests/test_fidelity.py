"""Replay fidelity as a person would judge it: a table of labelled recorded/replayed image pairs drawn
here (legitimate tool differences vs fabrications), the separation printed and asserted against the
threshold code_correctness and routing use, recorded errors reproduced by the replay, cells drawing
with unseeded randomness (their pictures do not count), and the real VisualSketchpad record whose
first cell fails and whose second draws an unseeded spring layout."""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, ImageDraw, ImageFont, ImageOps  # noqa: E402

from judges.code_correctness import FABRICATION_FIDELITY, CodeCorrectnessJudge  # noqa: E402
from pipeline.stages.fidelity import (  # noqa: E402
    cell_fidelity,
    grey_std,
    image_match,
    integrals,
    text_fidelity,
    unseeded_randomness,
    window_variance,
)
from routing.policy import RoutingPolicy  # noqa: E402
from schemas import sample as S  # noqa: E402

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "real-data"
UID = 60000 + (os.getpid() + 4100) % 5000  # apart from the other sandbox tests' uids


# --- drawing ----------------------------------------------------------------------------------
def _enc(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _jpeg(im: Image.Image, q: int = 70) -> bytes:
    return _enc(im.convert("RGB"), "JPEG", quality=q)


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


@dataclass(frozen=True)
class Label:
    xy: tuple[int, int]
    text: str


LABELS = (
    Label((412, 318), "T = 273.15 K"),
    Label((980, 702), "d = 4.71 nm"),
    Label((1290, 215), "p = 0.038"),
    Label((230, 905), "n = 1729"),
    Label((700, 1040), "v = 36.2 km/s"),
)


def scientific_image(seed: int = 0, labels: tuple[Label, ...] = LABELS, size=(1600, 1200)) -> Image.Image:
    """A 1.9 MP scientific-looking figure: textured background, grid, cells, curves, small labels."""
    rng = np.random.default_rng(seed)
    W, H = size
    yy, xx = np.mgrid[0:H, 0:W]
    base = 200 + 25 * np.sin(xx / 97.0 + seed) * np.cos(yy / 131.0) + rng.normal(0, 6, (H, W))
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).convert("RGB")
    d = ImageDraw.Draw(im)
    for x in range(0, W, 100):
        d.line([(x, 0), (x, H)], fill=(170, 170, 190), width=1)
    for y in range(0, H, 100):
        d.line([(0, y), (W, y)], fill=(170, 170, 190), width=1)
    for _ in range(60):
        x, y = (int(v) for v in rng.integers(20, [W - 60, H - 60]))
        r = int(rng.integers(8, 30))
        col = tuple(int(c) for c in rng.integers(20, 160, 3))
        d.ellipse([x, y, x + r, y + int(r * rng.uniform(0.6, 1.4))], outline=col, width=2)
    pts = [(x, int(H / 2 + 180 * np.sin(x / 170.0 + seed) + 60 * np.cos(x / 41.0))) for x in range(0, W, 8)]
    d.line(pts, fill=(200, 40, 40), width=3)
    for lab in labels:
        d.text(lab.xy, lab.text, fill=(10, 10, 10), font=_font(14))
    return im


def label_box(lab: Label, pad: tuple[int, int] = (18, 12)) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox(lab.xy, lab.text, font=_font(14))
    return (x0 - pad[0], y0 - pad[1], x1 + pad[0], y1 + pad[1])


def zoom(im: Image.Image, box, factor: float, resample=Image.Resampling.LANCZOS) -> Image.Image:
    c = im.crop(box)
    return c.resize((round(c.width * factor), round(c.height * factor)), resample)


def widen(box, min_side: int, size) -> tuple[int, int, int, int]:
    """DeepEyes/Thyme-style repair: widen a box to ``min_side`` around its centre, then clamp."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = max(x1 - x0, min_side), max(y1 - y0, min_side)
    nx0 = int(min(max(0, cx - w / 2), size[0] - w))
    ny0 = int(min(max(0, cy - h / 2), size[1] - h))
    return (nx0, ny0, nx0 + int(w), ny0 + int(h))


def edit_digit(im: Image.Image, lab: Label, new_text: str, xy_scale: float = 1.0, origin=(0, 0)) -> Image.Image:
    """Redraw a label with one value changed, on a patch of its own background."""
    out = im.copy()
    d = ImageDraw.Draw(out)
    f = _font(round(14 * xy_scale))
    x = (lab.xy[0] - origin[0]) * xy_scale
    y = (lab.xy[1] - origin[1]) * xy_scale
    bx = d.textbbox((x, y), lab.text, font=f)
    arr = np.asarray(out.convert("RGB"))
    bg = tuple(int(v) for v in np.median(arr[max(0, int(bx[1]) - 3)], axis=0))
    d.rectangle(bx, fill=bg)
    d.text((x, y), new_text, fill=(10, 10, 10), font=f)
    return out


def plot(ys=None, dpi=100, figsize=(6.4, 4.8), tight=False, title="Titration curve, Ka = 1.8e-5") -> bytes:
    x = np.linspace(0, 25, 26)
    y = ys if ys is not None else 3 + 8 / (1 + np.exp(-(x - 12.5))) + 0.05 * x
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    ax.plot(x, y, "o-", ms=3)
    ax.set_xlabel("titrant volume (mL)")
    ax.set_ylabel("pH")
    ax.set_title(title)
    ax.annotate("equivalence 12.5 mL", (12.5, 7.0), (15, 5), arrowprops={"arrowstyle": "->"})
    ax.grid(True, alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return buf.getvalue()


def mask_image(seed: int = 3, drop: int | None = None) -> np.ndarray:
    """A segmentation mask (0/255) of a few blobs, as PyVision code saves it."""
    rng = np.random.default_rng(seed)
    H, W = 360, 480
    yy, xx = np.mgrid[0:H, 0:W]
    m = np.zeros((H, W), bool)
    for k in range(6):
        cx, cy = rng.uniform(60, W - 60), rng.uniform(60, H - 60)
        a, b = rng.uniform(15, 45), rng.uniform(15, 45)
        if k != drop:
            m |= ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1
    return (m * 255).astype(np.uint8)


def imshow_png(mask: np.ndarray, cmap=None, axis_off=True, dpi=100) -> bytes:
    fig = plt.figure(figsize=(6, 4.5), dpi=dpi)
    plt.imshow(mask, cmap=cmap)
    if axis_off:
        plt.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# --- the labelled table -----------------------------------------------------------------------
@cache
def labelled_pairs() -> list[tuple[str, bool, bytes, bytes]]:
    """(name, legitimate, recorded, replayed) for every pair of the table."""
    img = scientific_image()
    other = scientific_image(seed=7, labels=tuple(Label((lb.xy[0] + 37, lb.xy[1] - 21), lb.text[::-1]) for lb in LABELS))
    W, H = img.size
    L0, L1, L2, L3 = LABELS[0], LABELS[1], LABELS[2], LABELS[3]
    b0, b1, b2, b3 = label_box(L0), label_box(L1), label_box(L2), label_box(L3)
    z0 = zoom(img, b0, 3)
    pairs: list[tuple[str, bool, bytes, bytes]] = []

    def legit(name, rec, rep):
        pairs.append((name, True, rec, rep))

    def fake(name, rec, rep):
        pairs.append((name, False, rec, rep))

    # legitimate: the same region at another size / filter / encoding
    legit("zoom 3x Lanczos vs 2x bicubic", _enc(z0), _enc(zoom(img, b0, 2, Image.Resampling.BICUBIC)))
    legit("zoom 4x vs plain crop 1x", _enc(zoom(img, b1, 4)), _enc(img.crop(b1)))
    legit("zoom 4x nearest vs 4x Lanczos", _enc(zoom(img, b2, 4, Image.Resampling.NEAREST)), _enc(zoom(img, b2, 4)))
    legit("zoom resized to 336x336 (aspect changed)", _enc(img.crop(b3).resize((336, 336), Image.Resampling.BICUBIC)),
          _enc(zoom(img, b3, 2)))
    legit("zoom JPEG q=70 vs PNG", _jpeg(z0), _enc(z0))
    legit("full image JPEG q=70 vs PNG (1.9 MP)", _jpeg(img), _enc(img))
    legit("full image 1/3 downscale vs full", _enc(img.resize((W // 3, H // 3), Image.Resampling.LANCZOS)), _enc(img))
    legit("greyscale PNG vs RGB PNG", _enc(z0.convert("L")), _enc(z0))
    # legitimate: a repaired box (min-box widening, clamping, margins)
    tiny = (L0.xy[0] + 10, L0.xy[1] - 2, L0.xy[0] + 52, L0.xy[1] + 18)  # 42x20 px box on "273.15"
    deepeyes_rec = img.crop(widen(tiny, 56, img.size)).resize((224, 224), Image.Resampling.BICUBIC)
    legit("DeepEyes zoom: min-box widened to 56 px, resized 224 vs plain crop", _enc(deepeyes_rec), _enc(img.crop(tiny)))
    tiny2 = (L2.xy[0] + 20, L2.xy[1], L2.xy[0] + 48, L2.xy[1] + 16)
    legit("min-box widened 28 -> 64 px, 4x vs plain 4x", _enc(zoom(img, widen(tiny2, 64, img.size), 4)),
          _enc(zoom(img, tiny2, 4)))
    nx0, ny0, nx1, ny1 = (v / s for v, s in zip(b1, (W, H, W, H), strict=True))
    mini_rec = img.crop((int(nx0 * W) - 3, int(ny0 * H) - 3, int(np.ceil(nx1 * W)) + 3, int(np.ceil(ny1 * H)) + 3))
    mini_rec.thumbnail((512, 512)) if max(mini_rec.size) > 512 else None
    mini_rec = mini_rec.resize((mini_rec.width * 3, mini_rec.height * 3), Image.Resampling.BICUBIC)
    legit("Mini-o3 grounding zoom: normalised box, rounding + 3 px, 3x", _enc(mini_rec), _enc(img.crop(b1)))
    edge_box = (W - 120, H - 90, W + 40, H + 30)  # runs off the image: PIL pads black
    legit("out-of-range box: clamped crop vs padded crop", _enc(zoom(img, (W - 120, H - 90, W, H), 2)),
          _enc(zoom(img, edge_box, 2)))
    legit("recorded crop = replayed crop minus 8 % margin", _enc(zoom(img, (b3[0] + 8, b3[1] + 3, b3[2] - 8, b3[3] - 3), 3)),
          _enc(zoom(img, b3, 3)))
    legit("recorded crop = replayed crop plus 40 px margin", _enc(zoom(img, (b0[0] - 40, b0[1] - 40, b0[2] + 40, b0[3] + 40), 2)),
          _enc(zoom(img, b0, 3)))
    big_region = (300, 250, 900, 700)
    legit("large region 600x450 vs same at 0.5x", _enc(img.crop(big_region)), _enc(zoom(img, big_region, 0.5)))
    # legitimate: plots rendered differently
    legit("plot dpi 100 vs dpi 150", plot(dpi=100), plot(dpi=150))
    legit("plot bbox_inches='tight' vs default", plot(tight=True), plot())
    legit("plot figsize 6.4x4.8 vs 6x4.5 at dpi 120", plot(figsize=(6.4, 4.8)), plot(figsize=(6, 4.5), dpi=120))
    legit("plot dpi 72 tight vs dpi 100", plot(dpi=72, tight=True), plot(dpi=100))
    legit("plot JPEG q=70 vs PNG", _jpeg(Image.open(io.BytesIO(plot()))), plot())
    legit("plot dpi 250 vs dpi 300", plot(dpi=250), plot(dpi=300))
    legit("plot dpi 72 vs dpi 150", plot(dpi=72), plot(dpi=150))
    legit("plot dpi 200 vs dpi 100", plot(dpi=200), plot(dpi=100))
    # legitimate: PyVision plt.imshow of a mask vs the recorded mask image
    mask = mask_image()
    legit("PyVision: recorded mask vs plt.imshow(mask, cmap='gray'), axis off", _enc(Image.fromarray(mask)),
          imshow_png(mask, cmap="gray"))
    legit("PyVision: recorded mask vs plt.imshow(mask) viridis, axis off", _enc(Image.fromarray(mask)), imshow_png(mask))
    legit("PyVision: recorded mask vs plt.imshow(mask, cmap='gray') with axes", _enc(Image.fromarray(mask)),
          imshow_png(mask, cmap="gray", axis_off=False))

    # fabricated: an edited value
    fake("zoom: one digit of the label edited", _enc(edit_digit(z0, L0, "T = 278.15 K", 3, b0[:2])), _enc(z0))
    fake("zoom: digit edited, then JPEG q=70", _jpeg(edit_digit(z0, L0, "T = 273.16 K", 3, b0[:2])), _enc(z0))
    fake("zoom: digit edited, recorded 2x vs replayed 3x",
         _enc(edit_digit(zoom(img, b1, 2), L1, "d = 4.77 nm", 2, b1[:2])), _enc(zoom(img, b1, 3)))
    fake("full image: one digit of a 14 px label edited", _enc(edit_digit(img, L3, "n = 1129")), _enc(img))
    fake("DeepEyes zoom: widened crop with the value edited", _enc(edit_digit(
        img.crop(widen(tiny, 56, img.size)), L0, "T = 213.15 K", 1, widen(tiny, 56, img.size)[:2]
    ).resize((224, 224), Image.Resampling.BICUBIC)), _enc(img.crop(tiny)))
    # fabricated: another region / image
    fake("another label region, same size", _enc(zoom(img, (b2[0], b2[1], b2[0] + b0[2] - b0[0], b2[1] + b0[3] - b0[1]), 3)),
         _enc(z0))
    decoy = (b0[0] + 700, b0[1] + 400, b0[2] + 700, b0[3] + 400)
    fake("decoy region of the same image (corpus case)", _enc(zoom(img, decoy, 3)), _enc(z0))
    shift = (b0[2] - b0[0]) // 2
    fake("region shifted by half its width", _enc(zoom(img, (b0[0] + shift, b0[1], b0[2] + shift, b0[3]), 3)), _enc(z0))
    fake("same box on another image", _enc(zoom(other, b0, 3)), _enc(z0))
    fake("another image, full frame", _enc(other), _enc(img))
    fake("horizontally flipped zoom", _enc(ImageOps.mirror(z0)), _enc(z0))
    fake("rotated 180 degrees", _enc(z0.rotate(180)), _enc(z0))
    fake("contrast-inverted zoom", _enc(ImageOps.invert(z0.convert("RGB"))), _enc(z0))
    inv = z0.copy()
    patch = (z0.width // 3, 0, 2 * z0.width // 3, z0.height)
    inv.paste(ImageOps.invert(z0.crop(patch).convert("RGB")), patch[:2])
    fake("contrast-inverted region inside the zoom", _enc(inv), _enc(z0))
    fake("uniform grey instead of the zoom", _enc(Image.new("RGB", z0.size, (200, 200, 200))), _enc(z0))
    noise = np.random.default_rng(1).integers(0, 255, (z0.height, z0.width), dtype=np.uint8)
    fake("random noise instead of the zoom", _enc(Image.fromarray(noise)), _enc(z0))
    # fabricated: plots and masks that the code does not draw
    x = np.linspace(0, 25, 26)
    ys = 3 + 8 / (1 + np.exp(-(x - 12.5))) + 0.05 * x
    moved = ys.copy()
    moved[18] -= 2.0
    fake("plot with one data point changed", plot(ys=moved), plot())
    fake("plot title value edited (Ka 1.8e-5 -> 1.3e-5)", plot(title="Titration curve, Ka = 1.3e-5"), plot())
    fake("plot title value edited at dpi 250", plot(dpi=250, title="Titration curve, Ka = 1.3e-5"), plot(dpi=250))
    fake("another curve, same axes", plot(ys=3 + 8 / (1 + np.exp(-(x - 8.0))) + 0.05 * x), plot())
    fake("PyVision: mask with one blob missing vs imshow", _enc(Image.fromarray(mask_image(drop=2))),
         imshow_png(mask, cmap="gray"))
    fake("PyVision: another mask vs imshow", _enc(Image.fromarray(mask_image(seed=11))), imshow_png(mask, cmap="gray"))
    return pairs


def threshold() -> float:
    """The fidelity below which code_correctness scores 0 and routing says observation_mismatch."""
    judge = CodeCorrectnessJudge()
    policy = RoutingPolicy()

    def score(f: float) -> float:
        cell = {S.CELL_INDEX: 0, S.CELL_STATUS: "ok", S.CELL_FIDELITY: f}
        return judge.judge({S.REPLAY: [cell]}).score

    # a fidelity at the threshold passes routing, just below it is rejected
    assert score(FABRICATION_FIDELITY) >= policy.min_code_correctness
    assert score(FABRICATION_FIDELITY - 1e-3) < policy.min_code_correctness
    return FABRICATION_FIDELITY


def test_fidelity_table_separates_legitimate_from_fabricated(capsys):
    pairs = labelled_pairs()
    assert len(pairs) >= 30 and {p[1] for p in pairs} == {True, False}
    rows = []
    for name, ok, rec, rep in pairs:
        t0 = time.perf_counter()
        m = image_match(rec, rep)
        ms = (time.perf_counter() - t0) * 1000
        rows.append((name, ok, m, ms))
    thr = threshold()
    legit = [r[2]["score"] for r in rows if r[1]]
    fake = [r[2]["score"] for r in rows if not r[1]]

    def fmt(v: float | None) -> str:
        return "     -" if v is None else f"{v:6.3f}"

    with capsys.disabled():
        print(f"\n{'pair':<68} {'label':<10} {'score':>6} {'rho':>6} {'local':>6} {'strong':>6} {'plain':>6} "
              f"{'ms':>6}  registration")
        for name, ok, m, ms in rows:
            print(f"{name:<68} {'legit' if ok else 'FABRICATED':<10} {m['score']:6.3f} {m['rho']:6.3f} "
                  f"{m['local']:6.3f} {m['strong']:6.3f} {fmt(m['plain'])} {ms:6.1f}  {m['how']}")
        print(f"{len(legit)} legitimate, {len(fake)} fabricated pairs; min legitimate {min(legit):.3f}, "
              f"max fabricated {max(fake):.3f}, margin {min(legit) - max(fake):.3f}; threshold {thr}; "
              f"median {np.median([r[3] for r in rows]):.1f} ms, max {max(r[3] for r in rows):.1f} ms per pair")
    assert len(legit) + len(fake) >= 30
    bad_legit = [(r[0], r[2]["score"]) for r in rows if r[1] and r[2]["score"] < thr]
    bad_fake = [(r[0], r[2]["score"]) for r in rows if not r[1] and r[2]["score"] >= thr]
    assert not bad_legit, f"legitimate pairs called fabricated: {bad_legit}"
    assert not bad_fake, f"fabricated pairs accepted: {bad_fake}"
    assert min(legit) > max(fake)


# --- text and errors --------------------------------------------------------------------------
PY_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/tmp/work/cell_1.py", line 32, in <module>\n'
    "    flow_value, flow_dict = nx.maximum_flow(G, source_node, sink_node)\n"
    '  File "/opt/venv/lib/python3.12/site-packages/networkx/algorithms/flow/preflowpush.py", line 41, in preflow_push_impl\n'
    "    detect_unboundedness(R, s, t)\n"
    "networkx.exception.NetworkXUnbounded: Infinite capacity path, flow unbounded above.\n"
)


def test_reproduced_error_is_faithful_other_errors_are_not():
    recorded = (
        "Execution error. Exit code: 1, Output:\nERROR: ERROR: NetworkXUnbounded: Infinite capacity path, flow "
        "unbounded above.\n\nNetworkXUnbounded                         Traceback (most recent call last)\n"
        "Cell In[2], line 32\n---> 32 flow_value, flow_dict = nx.maximum_flow(G, source_node, sink_node)\n"
        "File ~/miniforge3/envs/autogen/lib/python3.9/site-packages/networkx/utils/backends.py:412\n"
    )
    assert text_fidelity(recorded, "", replayed_error=PY_TRACEBACK) == 1.0
    assert text_fidelity(recorded, "\n" + PY_TRACEBACK) == 1.0  # as replay.py joins stdout and error
    other_exc = PY_TRACEBACK.replace("networkx.exception.NetworkXUnbounded", "KeyError")
    assert text_fidelity(recorded, other_exc) == 0.0
    # a recorded success where the replay raised stays low, whatever it printed before the error
    assert text_fidelity("Maximum flow value: 10", "Maximum flow value: 10\n" + PY_TRACEBACK) <= 0.5
    # same type, another message: partial credit only
    other_msg = PY_TRACEBACK.replace("Infinite capacity path, flow unbounded above.", "graph has no sink node 7")
    assert text_fidelity(recorded, other_msg) < FABRICATION_FIDELITY
    # Thyme-style failure text naming the same exception
    thyme = "Sandbox for code execution failed:\nNameError: name 'zoomed' is not defined"
    replay = 'Traceback (most recent call last):\n  File "<cell>", line 3, in <module>\nNameError: name \'zoomed\' is not defined\n'
    assert text_fidelity(thyme, replay) == 1.0
    assert text_fidelity(thyme, replay.replace("zoomed", "x")) < 1.0
    # a recorded error where the replay succeeded: numbers of the traceback are not reproduced
    assert text_fidelity(recorded, "Maximum flow value: 10\n") < FABRICATION_FIDELITY
    # ordinary text rule unchanged: numbers the replay never printed
    assert text_fidelity("mean 7.0", "mean 12.5\n") == 0.0
    assert text_fidelity("mean 12.5", "mean 12.5\n") == 1.0


def test_real_visualsketchpad_recorded_error_reproduced():
    path = REAL_DATA / "visualsketchpad" / "graph_max_flow" / "5" / "output.json"
    if not path.exists():
        pytest.skip(f"real data not found at {path} (../shared/real-data is absent)")
    messages = json.loads(path.read_text())
    first_obs = next(
        c["text"] for m in messages if m["role"] == "user" for c in m["content"]
        if c.get("type") == "text" and c["text"].startswith("OBSERVATION: Execution error")
    )
    # run the recorded cell's failing call for real (networkx, when installed) to get the replay's traceback
    nx = pytest.importorskip("networkx", reason="networkx is not installed; the real cell cannot be replayed")
    import traceback

    G = nx.from_numpy_array(np.array([[0, 7, 6], [0, 0, 4], [0, 0, 0]]), create_using=nx.DiGraph)
    try:
        nx.maximum_flow(G, 0, 2)
    except Exception as exc:  # noqa: BLE001 - the replay's own exception, whatever it is
        replayed = "".join(traceback.format_exception(exc))
    else:
        pytest.fail("networkx no longer raises on this graph")
    assert cell_fidelity(first_obs, [], "", [], replayed_error=replayed) >= 0.95
    assert cell_fidelity(first_obs, [], "Maximum flow value: 10\n", []) < FABRICATION_FIDELITY


# --- unseeded randomness ----------------------------------------------------------------------
def test_unseeded_randomness_is_detected_in_code():
    assert unseeded_randomness("pos = nx.spring_layout(G)  # positions for all nodes") == "spring_layout without seed="
    assert unseeded_randomness("pos = nx.random_layout(G, seed=None)")
    assert unseeded_randomness("import numpy as np\nplt.scatter(np.random.rand(20), np.random.rand(20))")
    assert unseeded_randomness("import random\nrandom.shuffle(items)")
    assert unseeded_randomness("from numpy.random import normal\nys = normal(size=9)")
    assert unseeded_randomness("rng = np.random.default_rng()\nys = rng.normal(size=9)")
    assert unseeded_randomness("ys = np.random.rand(9)\nnp.random.seed(0)")  # seeded only after the draw
    # seeded, or no randomness: reproducible
    for code in ("pos = nx.spring_layout(G, seed=42)", "np.random.seed(0)\nys = np.random.rand(9)",
                 "random.seed(3)\nrandom.shuffle(items)", "rng = np.random.default_rng(7)\nys = rng.normal(size=9)",
                 "pos = nx.circular_layout(G)", "plt.plot(np.linspace(0, 1, 9))", "def broken(:", "", None):
        assert unseeded_randomness(code) is None, code


def graph_png(seed: int) -> bytes:
    """A small capacity graph drawn with networkx's spring layout (its node positions depend on the seed)."""
    nx = pytest.importorskip("networkx", reason="networkx is not installed")
    G = nx.DiGraph()
    for u, v, c in ((0, 1, 7), (0, 2, 6), (1, 2, 4), (2, 3, 5), (1, 3, 2)):
        G.add_edge(u, v, capacity=c)
    fig = plt.figure(figsize=(6.4, 4.8), dpi=100)
    pos = nx.spring_layout(G, seed=seed)
    nx.draw(G, pos, with_labels=True, node_size=700, node_color="lightblue", font_size=12)
    nx.draw_networkx_edge_labels(G, pos, edge_labels={(u, v): d["capacity"] for u, v, d in G.edges(data=True)})
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def test_unseeded_layout_picture_does_not_count_as_fabrication():
    recorded, replayed = graph_png(seed=1), graph_png(seed=2)  # two runs of an unseeded spring_layout
    text = "Maximum flow value: 11"
    # as pictures, the two layouts differ: compared plainly they would be called fabricated
    assert image_match(recorded, replayed)["score"] < FABRICATION_FIDELITY
    assert cell_fidelity(text, [recorded], text, [replayed]) < FABRICATION_FIDELITY
    unseeded = "pos = nx.spring_layout(G)\nnx.draw(G, pos)\nprint(nx.maximum_flow_value(G, 0, 3))"
    assert cell_fidelity(text, [recorded], text, [replayed], code=unseeded) == 1.0
    # a seeded layout must reproduce its picture; and the text of an unseeded cell still counts
    seeded = unseeded.replace("spring_layout(G)", "spring_layout(G, seed=1)")
    assert cell_fidelity(text, [recorded], text, [replayed], code=seeded) < FABRICATION_FIDELITY
    assert cell_fidelity(text, [recorded], "Maximum flow value: 9", [replayed], code=unseeded) < FABRICATION_FIDELITY


@pytest.mark.timeout(300)
def test_real_visualsketchpad_spring_layout_cell_is_faithful():
    """graph_max_flow/5: the second cell draws ``nx.spring_layout(G)`` without a seed, so the recorded
    plot's layout differs from the replay's; its printed flow is what counts."""
    from pipeline.config import IngestConfig
    from pipeline.formats.base import RecordContext
    from pipeline.formats.sources import sketchpad_record
    from pipeline.formats.visualsketchpad import VisualSketchpad
    from pipeline.sandbox import SandboxLimits, ZygoteSandbox
    from pipeline.stages.replay import replay_row

    task = REAL_DATA / "visualsketchpad" / "graph_max_flow" / "5"
    if not (task / "output.json").is_file():
        pytest.skip(f"real data not found at {task} (see ../shared/real-data/README.md)")
    pytest.importorskip("networkx", reason="networkx is not installed; the real cells cannot be replayed")
    record = sketchpad_record(task / "output.json")
    row = VisualSketchpad().to_row(record, RecordContext(str(task / "output.json"), 0, IngestConfig(), task, "vsp"))
    box = ZygoteSandbox(SandboxLimits(cell_timeout_s=30.0, total_timeout_s=90.0), uid=UID, gid=UID)
    try:
        row = replay_row(row, box)
    finally:
        box.close()
    cells = row[S.REPLAY]
    assert [c[S.CELL_STATUS] for c in cells] == ["error", "ok"], [c[S.CELL_ERROR][-300:] for c in cells]
    second, turn = cells[1], row[S.TURNS][cells[1][S.CELL_TURN]]
    assert "spring_layout(G)" in turn[S.TURN_CODE] and unseeded_randomness(turn[S.TURN_CODE])
    assert turn[S.TURN_OBS_IMAGES] and second[S.CELL_IMAGES], "the recorded and the replayed cell both show a plot"
    assert "Maximum flow value: 10" in second[S.CELL_STDOUT]
    assert second[S.CELL_FIDELITY] >= FABRICATION_FIDELITY
    assert cells[0][S.CELL_FIDELITY] >= 0.95  # the reproduced NetworkXUnbounded error


def test_window_variance_equals_each_windows_own_variance():
    """Integral-image variances (visual gain's and fidelity's flat-window test) against np.var of
    every window: whole images and sub-regions, uint8 and float32, flat and textured windows."""
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (37, 53)).astype(np.uint8)
    grey[5:20, 10:30] = 128  # a flat patch: variance 0 there
    for img in (grey, grey.astype(np.float32) / 255):
        integ = integrals(img)
        for th, tw, y0, x0, h, w in ((1, 1, 0, 0, 37, 53), (7, 5, 0, 0, 37, 53), (15, 20, 5, 10, 15, 20),
                                     (4, 9, 3, 8, 20, 30), (37, 53, 0, 0, 37, 53)):
            got = window_variance(integ, th, tw, y0, x0, h, w)
            region = img[y0:y0 + h, x0:x0 + w].astype(np.float64)
            want = np.array([[region[y:y + th, x:x + tw].var() for x in range(w - tw + 1)] for y in range(h - th + 1)])
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=1e-9 * max(1.0, float(want.max())))
        assert window_variance(integ, 15, 20, 5, 10, 15, 20)[0, 0] == pytest.approx(0.0, abs=1e-9)
        assert window_variance(integ, 7, 5).shape == window_variance(integrals(img), 7, 5, 0, 0, 37, 53).shape


def test_grey_std_equals_numpy_std():
    """The searches' flatness test: OpenCV's one-pass std equals np.std (accumulated in float64,
    as OpenCV does) on every depth they see, and on views, bool, int64 and empty arrays."""
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (41, 67)).astype(np.uint8)
    for img in (grey, grey[3:30, 7:50], grey.astype(np.float32) / 255, grey.astype(np.float64), grey.astype(np.int64),
                grey > 128, np.full((9, 9), 7, np.uint8)):
        assert grey_std(img) == pytest.approx(float(np.std(img, dtype=np.float64)), rel=1e-9, abs=1e-12)
    assert grey_std(np.zeros((0, 5), np.uint8)) == 0.0
