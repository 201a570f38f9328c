"""Chemistry: two weak-acid titration curves (tiny equivalence-point annotations) and the
decorative beaker of strong acid (pH = -log10 c)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sample_corpus.drawing import Box, Scene, deco_canvas, fmt_num, get_font, pick, text_box, view_note


def _titration_ph(v: np.ndarray, params: tuple[float, float, float, float, float]) -> np.ndarray:
    """Weak acid + strong base: initial rise, buffer region, jump centred at veq, basic plateau."""
    ph0, a, jump, w, veq = params
    base = ph0 + a * (1 - np.exp(-v / (0.12 * veq))) + 0.025 * v
    return np.clip(base + jump / (1 + np.exp(-(v - veq) / w)), 0, 14)


def scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    """The titration plot: answer the equivalence-point volume of one curve (decoy: the other's)."""
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
    ftick = get_font(max(20, W // 140))
    for v in range(0, 51, 5):
        d.text((X(v), B + 16), str(v), font=ftick, fill=(0, 0, 0), anchor="mt")
    for ph in range(0, 15, 2):
        d.text((L - 14, Y(ph)), str(ph), font=ftick, fill=(0, 0, 0), anchor="rm")
    flab = get_font(max(26, W // 100))
    d.text(((L + R) / 2, B + 70), "Volume of 0.100 M NaOH added (mL)", font=flab, fill=(0, 0, 0), anchor="mt")
    d.text((L, T - 16), "pH", font=flab, fill=(0, 0, 0), anchor="ld")
    d.text(
        (L, int(0.03 * H)),
        "Titration of two weak-acid samples with 0.100 M NaOH",
        font=get_font(max(34, W // 70)),
        fill=(0, 0, 0),
    )
    while True:
        va, vb = (round(float(x), 1) for x in rng.uniform(12, 40, 2))
        if abs(va - vb) >= 6:
            break
    tiny = int(rng.integers(11, 15))
    ft = get_font(tiny)
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
        ann[name] = (txt.split("= ")[1], text_box(d, (xe + 16, ye + 4), txt, ft, (50, 50, 50), "lm"))
        xh = float(X(veq / 2))
        yh = float(Y(ph(np.array([veq / 2]))[0]))
        d.ellipse([xh - 4, yh - 4, xh + 4, yh + 4], fill=col)
        text_box(
            d, (xh + 10, yh - 14), f"half-eq. pH {ph(np.array([veq / 2]))[0]:.2f}", ft, (90, 90, 90), "lm"
        )
    fleg = get_font(max(24, W // 110))
    lx, ly = L + 40, T + 40
    d.rectangle(
        [lx - 16, ly - 16, lx + 470, ly + 100], fill=(255, 255, 255), outline=(120, 120, 120), width=2
    )
    for j, (name, _, col, cname) in enumerate(curves):
        d.line([(lx, ly + 18 + 48 * j), (lx + 70, ly + 18 + 48 * j)], fill=col, width=5)
        d.text(
            (lx + 90, ly + 18 + 48 * j), f"Sample {name} ({cname})", font=fleg, fill=(0, 0, 0), anchor="lm"
        )
    tname = pick(rng, ("A", "B"))
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
            f"I can see where the {tcol} curve jumps, but at the {view_note(W, H)} downsampling needed to show "
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



def decorative(rng: np.random.Generator) -> Scene:
    """The beaker sketch: the acid and its concentration are in the question; the answer is the pH."""
    k = int(rng.integers(1, 5))
    acid = pick(rng, ("HCl", "HNO3"))
    conc = fmt_num(10.0**-k)
    img, d = deco_canvas(rng, (255, 255, 255))
    W, H = img.size
    bx0, bx1, by0, by1 = W // 2 - 150, W // 2 + 150, 130, H - 60
    d.rectangle([bx0, by0 + 140, bx1, by1], fill=(190, 220, 250))
    d.line([(bx0, by0), (bx0, by1), (bx1, by1), (bx1, by0)], fill=(0, 0, 0), width=6)
    box = text_box(d, (W // 2, by0 + 220), f"{acid} {conc} M", get_font(44), (0, 0, 0), "mm")
    d.text((W // 2, 60), "25 °C", font=get_font(36), fill=(0, 0, 0), anchor="mm")
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
