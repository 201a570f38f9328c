"""Geography: a topographic sheet (hypsometric bands, contours, tiny spot heights, one summit
circled) and the decorative map-scale sketch (real distance from a map distance)."""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image, ImageDraw

from sample_corpus.drawing import (
    Box,
    Scene,
    deco_canvas,
    fmt_num,
    get_font,
    misread_value,
    pick,
    text_box,
    view_note,
)

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


def scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    """The topographic sheet: answer the spot height of the circled summit (decoy: another summit's)."""
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
    ft = get_font(tiny)
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
        labels.append((f"{e} m", text_box(d, (x + 12, y - 2), f"{e} m", ft, (20, 20, 20), "lm"), (x, y)))
    # map furniture
    d.rectangle([20, 20, W - 20, H - 20], outline=(40, 40, 40), width=4)
    sheet = f"{'ABCDEFGH'[int(rng.integers(8))]}{int(rng.integers(1, 40))}"
    ftitle = get_font(max(32, W // 75))
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
        d.text((sx + j * km, sy - 8), str(j), font=get_font(24), fill=(0, 0, 0), anchor="md")
    d.text((sx + 3 * km, sy - 8), "3 km", font=get_font(24), fill=(0, 0, 0), anchor="md")
    nx, ny = W - 110, 150
    d.polygon([(nx, ny - 60), (nx - 25, ny + 20), (nx, ny), (nx + 25, ny + 20)], fill=(0, 0, 0))
    d.text((nx, ny - 70), "N", font=get_font(44), fill=(0, 0, 0), anchor="md")
    if len(labels) < 2:  # extremely unlikely: fall back to a contour label as decoy
        labels.append(("500", (40, 40, 80, 60), (60, 50)))
    ti = int(rng.integers(len(labels)))
    ans, tbox, (tx, ty) = labels[ti]
    d.ellipse([tx - 80, ty - 80, tx + 80, ty + 80], outline=(230, 0, 0), width=5)
    others = [lb for j, lb in enumerate(labels) if j != ti]
    dval, dbox, _ = others[int(rng.integers(len(others)))]
    if dval == ans:
        dval = misread_value(ans, rng)
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
            f"after downsampling {view_note(W, H)}; I'll crop around the circled triangle and enlarge it."
        ),
        "bg": "colour bands",
        "note": (
            f"That fits the contours: the circled summit lies inside the {floor} m contour ring, so a spot "
            f"height of {ans} between {floor} and {floor + interval} m is consistent with the map."
        ),
    }
    return Scene(img, "label", question, ans, tbox, dbox, dval, topic)



_TOWNS = ("Ashford", "Brookvale", "Carnmoor", "Dunhill", "Elmstead", "Fairhaven", "Glenrock", "Highmere")


def decorative(rng: np.random.Generator) -> Scene:
    """The sketch map: scale and map distance are in the question; the answer is the real distance."""
    S = int(pick(rng, (25000, 50000, 100000, 200000)))
    dcm = int(pick(rng, (2, 3, 4, 5, 6, 8)))
    km = S * dcm / 100000
    t1, t2 = (str(t) for t in rng.choice(_TOWNS, 2, replace=False))
    img, d = deco_canvas(rng, (214, 236, 200))
    W, H = img.size
    p1, p2 = (120, H // 2 + 60), (W - 140, H // 2 - 40)
    d.line([p1, p2], fill=(90, 90, 90), width=4)
    for (x, y), nm in ((p1, t1), (p2, t2)):
        d.ellipse([x - 16, y - 16, x + 16, y + 16], fill=(200, 30, 30))
        d.text((x, y + 28), nm, font=get_font(34), fill=(0, 0, 0), anchor="mt")
    box = text_box(
        d, ((p1[0] + p2[0]) / 2, (p1[1] + p2[1]) / 2 - 24), f"{dcm} cm", get_font(40), (0, 0, 0), "md"
    )
    d.text((30, 30), f"Scale 1:{S:,}", font=get_font(36), fill=(0, 0, 0))
    return Scene(
        img,
        "decorative",
        (
            f"On a map with scale 1:{S:,}, {t1} and {t2} are {dcm} cm apart (see the sketch). "
            f"What is the real distance between the two towns in km?"
        ),
        f"{fmt_num(km)} km",
        box,
        topic={
            "overview": f"The image is a small {W}x{H} sketch map with two towns joined by a line and a scale note.",
            "label": f"{dcm} cm",
            "stated": f"The map scale (1:{S:,}) and the map distance ({dcm} cm) are given in the question.",
            "solution": (
                f"1 cm on the map is {S:,} cm = {fmt_num(S / 100000)} km on the ground, so {dcm} cm corresponds to "
                f"{dcm} x {fmt_num(S / 100000)} km = {fmt_num(km)} km."
            ),
        },
    )
