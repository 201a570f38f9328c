"""Stand-in images for the real public records of ../shared/real-data, whose images were not
published with them (DeepEyes' V* bench images, Pixel-Reasoner's MVTec crops on its author's
machine). Drawn so the records' own boxes land on visible detail; used by tests and by
``bench/real_data.py`` through ``--image-root`` / ``ingest.path_map``, never written beside the
real data.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REAL_DATA_ENV = "TWI_REAL_DATA"
_BBOX = re.compile(r'"bbox_2d"\s*:\s*\[([^\]]*)\]')


def real_data_dir() -> Path:
    """``$TWI_REAL_DATA`` or ``../shared/real-data`` beside the repository."""
    env = os.environ.get(REAL_DATA_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "real-data"


def _texture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for k in range(0, width, 97):
        draw.line([(k, 0), (k, height)], fill=(20, 20, 20), width=1)
    return im


def _boxes(text: str) -> list[list[float]]:
    out = []
    for body in _BBOX.findall(text):
        try:
            box = [float(v) for v in body.split(",")]
        except ValueError:
            continue
        if len(box) == 4:
            out.append(box)
    return out


def deepeyes_stand_ins(jsonl: Path, dest: Path, limit: int | None = None) -> Path:
    """One stand-in per DeepEyes rollout image in ``dest`` (the run's --image-root), large enough
    for every zoom box the rollouts use on it, with a labelled patch drawn in each box."""
    dest.mkdir(parents=True, exist_ok=True)
    boxes: dict[str, list[list[float]]] = {}
    with open(jsonl) as fh:
        for n, line in enumerate(fh):
            if limit is not None and n >= limit:
                break
            rec = json.loads(line)
            text = json.dumps(rec.get("pred_output"))
            boxes.setdefault(rec["image"], []).extend(_boxes(text.replace('\\"', '"')))
    for k, (name, found) in enumerate(sorted(boxes.items())):
        width = int(max([b[2] for b in found] + [600])) + 64
        height = int(max([b[3] for b in found] + [400])) + 64
        im = _texture(width, height, k)
        draw = ImageDraw.Draw(im)
        for x1, y1, x2, y2 in found:
            if x2 > x1 and y2 > y1:
                draw.rectangle([x1, y1, x2, y2], outline=(255, 255, 255), width=2)
                draw.text((x1 + 2, y1 + 2), "A7", fill=(255, 255, 0))
        im.convert("RGB").save(dest / name, quality=92)
    return dest


def pixel_reasoner_stand_ins(json_file: Path, dest: Path, limit: int | None = None) -> dict[str, str]:
    """Stand-ins for the Pixel-Reasoner records' absolute image paths, under ``dest``; returns
    the ``ingest.path_map`` that points the author's prefix there. The recorded "crop" of each
    record is what the tool would have shown: its stand-in original cut with the record's
    normalised box padded by the tool's 0.1 (pipeline/formats/pixel_reasoner.py), at its own size
    (the tool's resize is left to the replay: fidelity registers across sizes)."""
    records = json.loads(Path(json_file).read_text())[:limit]
    prefix = "/NEW_EDS"
    for k, rec in enumerate(records):
        images = [p["image"] for m in rec["message_list"] if isinstance(m.get("content"), list)
                  for p in m["content"] if isinstance(p, dict) and isinstance(p.get("image"), str)]
        text = json.dumps(rec["message_list"]).replace('\\"', '"')
        found = [b for b in _boxes(text) if all(0 <= v <= 1 for v in b)]
        if not images or not images[0].startswith(prefix + "/"):
            continue
        original = dest / images[0][len(prefix) + 1 :]
        original.parent.mkdir(parents=True, exist_ok=True)
        if not original.exists():
            _texture(512, 512, 1000 + k).save(original)
        base = Image.open(original).convert("RGB")
        for path, box in zip(images[1:], found, strict=False):
            if not path.startswith(prefix + "/"):
                continue
            padded = [box[0] - 0.1, box[1] - 0.1, box[2] + 0.1, box[3] + 0.1]
            x1, y1, x2, y2 = (int(min(max(0.0, v), 1.0) * 512) for v in padded)
            crop = base.crop((x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)))
            target = dest / path[len(prefix) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            crop.save(target)
    return {prefix: str(dest)}
