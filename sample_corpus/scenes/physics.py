"""Physics: the emission spectrum of a discharge lamp (tiny wavelength labels above its three
strongest lines) and the decorative uniformly accelerated cart (s = a t^2 / 2)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from sample_corpus.drawing import Box, Scene, deco_canvas, fmt_num, get_font, pick, text_box, view_note

_LAMPS = ("H-1", "He-2", "Ne-3", "Hg-4", "Na-5", "Xe-6", "Kr-7")


def _band_name(lam: float) -> str:
    for hi, nm in ((450, "violet"), (495, "blue"), (570, "green"), (590, "yellow"), (620, "orange")):
        if lam < hi:
            return nm
    return "red"


def scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    """The spectrum plot: answer the wavelength label of the strongest line (decoy: another line's)."""
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
    ftick = get_font(max(20, W // 140))
    for lam in range(400, 720, 40):
        d.line([(X(lam), B), (X(lam), B + 12)], fill=(0, 0, 0), width=2)
        d.text((X(lam), B + 18), str(lam), font=ftick, fill=(0, 0, 0), anchor="mt")
    for j in range(0, 13, 2):
        d.text((L - 14, Y(j / 10)), f"{j / 10:.1f}", font=ftick, fill=(0, 0, 0), anchor="rm")
    flab = get_font(max(26, W // 100))
    d.text(((L + R) / 2, B + 70), "Wavelength (nm)", font=flab, fill=(0, 0, 0), anchor="mt")
    d.text((L, T - 16), "Relative intensity", font=flab, fill=(0, 0, 0), anchor="ld")
    lamp = pick(rng, _LAMPS)
    d.text(
        (L, int(0.03 * H)),
        f"Emission spectrum of discharge lamp {lamp}",
        font=get_font(max(34, W // 70)),
        fill=(0, 0, 0),
    )
    xs = np.arange(L, R + 1, dtype=np.float64)
    lam = lam0 + (xs - L) / (R - L) * (lam1 - lam0)
    ys = B - inten(lam) / ymax * (B - T)
    d.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=(25, 70, 190), width=3)
    tiny = int(rng.integers(11, 15))
    ft = get_font(tiny)
    order = np.argsort(-heights)[:3]
    boxes: list[tuple[str, Box]] = []
    for idx in order:
        c = centres[int(idx)]
        x, y = X(c), Y(float(inten(np.array([c]))[0]))
        d.line([(x, y - 8), (x, y - 18)], fill=(200, 30, 30), width=2)
        boxes.append((f"{c:.1f} nm", text_box(d, (x, y - 22), f"{c:.1f} nm", ft, (60, 60, 60), "md")))
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
            f"The tallest peak is obvious even at overview scale, but after downsampling {view_note(W, H)} its "
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



def decorative(rng: np.random.Generator) -> Scene:
    """The cart sketch: acceleration and time are in the question; the answer is the distance."""
    a = float(pick(rng, (1.5, 2.0, 2.5, 3.0, 4.0)))
    t = int(pick(rng, (4, 5, 6, 8, 10)))
    dist = 0.5 * a * t * t
    img, d = deco_canvas(rng, (245, 248, 255))
    W, H = img.size
    road = H - 120
    d.line([(0, road), (W, road)], fill=(60, 60, 60), width=6)
    d.rectangle([100, road - 130, 330, road - 45], fill=(220, 60, 60), outline=(0, 0, 0), width=4)
    for wx in (145, 285):
        d.ellipse([wx - 32, road - 64, wx + 32, road], fill=(40, 40, 40))
    d.line([(360, road - 90), (W - 120, road - 90)], fill=(0, 0, 0), width=6)
    d.polygon([(W - 120, road - 110), (W - 80, road - 90), (W - 120, road - 70)], fill=(0, 0, 0))
    box = text_box(d, ((360 + W - 100) / 2, road - 120), f"a = {fmt_num(a)} m/s^2", get_font(40), (0, 0, 0), "md")
    d.text((120, road - 160), "v0 = 0", font=get_font(36), fill=(0, 0, 0), anchor="ld")
    return Scene(
        img,
        "decorative",
        (
            f"A cart starts from rest and accelerates uniformly at {fmt_num(a)} m/s^2 for {t} s "
            f"(see the sketch). How far does it travel in that time?"
        ),
        f"{fmt_num(dist)} m",
        box,
        topic={
            "overview": f"The image is a small {W}x{H} cartoon of a cart on a road with an acceleration arrow.",
            "label": f"a = {fmt_num(a)} m/s^2",
            "stated": f"The acceleration ({fmt_num(a)} m/s^2), the start from rest and the time ({t} s) are all in the text.",
            "solution": (
                f"For uniform acceleration from rest, s = (1/2) a t^2 = 0.5 x {fmt_num(a)} m/s^2 x ({t} s)^2 = "
                f"{fmt_num(dist)} m."
            ),
        },
    )
