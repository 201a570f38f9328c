"""Image fidelity cost per pair kind, measured side by side in one run.

Times ``pipeline.stages.fidelity.image_match`` (decode included) on every pair of the labelled table of
tests/test_fidelity.py, grouped by kind (zoom crops, 1-2 MP full images, repaired boxes, plots,
PyVision masks, fabrications), plus a 1.9 MP JPEG-vs-PNG pair; prints the median and p90 in ms per
kind. Each pair is measured ``--repeat`` times after one warm-up call.

    python bench/fidelity.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.stages.fidelity import image_match  # noqa: E402
from tests.test_fidelity import _enc, _jpeg, labelled_pairs, scientific_image  # noqa: E402


def kind(name: str, legit: bool) -> str:
    if not legit:
        return "fabricated"
    if name.startswith("plot"):
        return "plot re-render"
    if name.startswith("PyVision"):
        return "PyVision mask"
    if name.startswith("full image") or name.startswith("large region"):
        return "full image / large region"
    if any(k in name for k in ("min-box", "Mini-o3", "out-of-range", "margin")):
        return "repaired box (containment)"
    return "zoom crop"


def p90(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(0.9 * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    img = scientific_image()
    pairs = [(kind(n, ok), rec, rep) for n, ok, rec, rep in labelled_pairs()]
    pairs.append(("1.9 MP JPEG q=70 vs PNG", _jpeg(img), _enc(img)))
    times: dict[str, list[float]] = {}
    for k, rec, rep in pairs:
        image_match(rec, rep)  # warm-up
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            image_match(rec, rep)
            times.setdefault(k, []).append((time.perf_counter() - t0) * 1000)
    print(f"{'pair kind':<30} {'pairs':>5} {'median ms':>10} {'p90 ms':>8}")
    for k, ts in times.items():
        print(f"{k:<30} {len(ts) // args.repeat:>5} {statistics.median(ts):>10.1f} {p90(ts):>8.1f}")


if __name__ == "__main__":
    main()
