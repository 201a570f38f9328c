"""Mathematics: a worksheet page on graph paper (triangle ABC with tiny side and angle labels, a
circle, a second triangle) and the decorative right-triangle sketch (Pythagoras)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from sample_corpus.drawing import Box, Scene, deco_canvas, get_font, pick, text_box, view_note


def scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    """The worksheet page: answer a side or angle label of triangle ABC (decoy: another label)."""
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
        font=get_font(max(30, W // 70)),
        fill=(30, 30, 30),
    )
    tiny = int(rng.integers(11, 15))
    ft = get_font(tiny)
    letter = get_font(max(36, W // 60))
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
            text_box(d, tuple(pos), f"{angs[k]:.0f}°", ft, (40, 40, 40), "mm"),
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
        labels["side " + nm] = (txt, text_box(d, tuple(mid + u * 24), txt, ft, (40, 40, 40), "mm"))
    # circle with centre O, radius and chord annotations
    ox, oy = 0.8 * W, 0.4 * H
    r = float(rng.uniform(0.1, 0.14)) * s
    d.ellipse([ox - r, oy - r, ox + r, oy + r], outline=(20, 20, 20), width=4)
    d.ellipse([ox - 5, oy - 5, ox + 5, oy + 5], fill=(20, 20, 20))
    d.text((ox - 30, oy + 30), "O", font=letter, fill=(20, 20, 20), anchor="mm")
    th = float(rng.uniform(-0.6, 0.6))
    px, py = ox + r * math.cos(th), oy - r * math.sin(th)
    d.line([(ox, oy), (px, py)], fill=(20, 20, 20), width=3)
    text_box(d, ((ox + px) / 2, (oy + py) / 2 - 16), f"r = {r / scale:.1f} cm", ft, (40, 40, 40), "mm")
    t1, t2 = float(rng.uniform(3.4, 4.0)), float(rng.uniform(4.9, 5.6))
    c1 = (ox + r * math.cos(t1), oy - r * math.sin(t1))
    c2 = (ox + r * math.cos(t2), oy - r * math.sin(t2))
    d.line([c1, c2], fill=(160, 40, 40), width=3)
    chord = math.hypot(c1[0] - c2[0], c1[1] - c2[1]) / scale
    text_box(d, ((c1[0] + c2[0]) / 2 - 60, (c1[1] + c2[1]) / 2), f"{chord:.1f} cm", ft, (160, 40, 40), "mm")
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
        text_box(
            d, tuple(mid + u2 * 22), f"{np.hypot(*(q[k] - q[j])) / scale:.1f} cm", ft, (20, 90, 40), "mm"
        )

    angle_q = bool(rng.random() < 0.35)
    fac = view_note(W, H)
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
        nm = pick(rng, ("AB", "BC", "CA"))
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



def decorative(rng: np.random.Generator) -> Scene:
    """The right-triangle sketch: both legs are in the question; the answer is the hypotenuse."""
    a, b, c = pick(
        rng, ((3, 4, 5), (6, 8, 10), (5, 12, 13), (8, 15, 17), (9, 12, 15), (7, 24, 25), (12, 16, 20))
    )
    img, d = deco_canvas(rng, (255, 255, 255))
    W, H = img.size
    k = min((W - 260) / a, (H - 200) / b)
    ox, oy = 150, H - 90
    pts = [(ox, oy), (ox + a * k, oy), (ox, oy - b * k)]
    d.polygon(pts, fill=(200, 225, 250), outline=(0, 0, 0), width=5)
    d.rectangle([ox, oy - 28, ox + 28, oy], outline=(0, 0, 0), width=3)
    big = get_font(40)
    box = text_box(d, (ox + a * k / 2, oy + 14), f"{a} cm", big, (0, 0, 0), "mt")
    d.text((ox - 16, oy - b * k / 2), f"{b} cm", font=big, fill=(0, 0, 0), anchor="rm")
    d.text((ox + a * k / 2 + 30, oy - b * k / 2 - 20), "?", font=get_font(56), fill=(200, 0, 0), anchor="lm")
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
