"""Replay cost per cell on real cells of the bundled corpus, three designs side by side in one run:

  (a) fresh interpreter per cell with the same library set (the common subprocess-per-call design;
      state is restored by re-running the trajectory's earlier cells, as stateless sandboxes do),
  (b) this project's sandbox (ZygoteSandbox: fork of a pre-imported zygote + every isolation layer),
  (c) unsandboxed in-process exec (the limit: same inputs, same globals, no isolation).

Hostile trajectories are left out (they must never run unsandboxed). (a) is slow, so it runs on
every ``--a-every``-th cell of the same set. All three run with the sandbox's malloc settings
(``GLIBC_TUNABLES``; this script re-executes itself to give (c) the same). Prints p50/p90 per
cell, the ratios, and how much of a cell is its own work: ``(c)`` is a floor under ``(b)``, so
``(a)/(b)`` cannot exceed ``(a)/(c)`` however cheap the isolation is.

    python bench/sandbox.py [--n 160] [--a-every 6]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.sandbox.parent import MALLOC_TUNABLES  # noqa: E402 - the sandbox's malloc settings, for (a) and (c)

PRELOAD = (
    "import numpy, cv2, scipy.ndimage, skimage, skimage.filters, skimage.measure, skimage.morphology, "
    "skimage.exposure, skimage.transform, matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot\n"
    "from PIL import Image\n"
)


def load_trajectories(n: int, corpus: Path | None = None) -> list[tuple[list, list[str]]]:
    """(inputs, code cells) of every non-hostile record of ``corpus`` (default: a sample corpus
    of ``n`` records built in the temp dir). Also used by bench/pipeline.py for its limit (L)."""
    from pipeline.config import IngestConfig
    from pipeline.sandbox import InputImage
    from pipeline.stages.ingest import plan_read_tasks, read_task
    from sample_corpus import ensure_sample_corpus
    from schemas import sample as S

    if corpus is None:
        corpus = ensure_sample_corpus(Path(tempfile.gettempdir()) / f"twi-bench-corpus-{n}", n=n, seed=0)
    labels = {json.loads(x)["sample_id"]: json.loads(x)["case"]
              for x in (corpus.parent / "labels.jsonl").read_text().splitlines()}
    out = []
    for task in plan_read_tasks([corpus], 64):
        for row in read_task(task, IngestConfig()):
            if labels.get(row[S.SAMPLE_ID]) == "hostile":
                continue
            cells = [t[S.TURN_CODE] for t in row[S.TURNS] if t[S.TURN_CODE]]
            inputs = [InputImage(i[S.IMG_NAME], i[S.IMG_BYTES]) for i in row[S.IMAGES]]
            out.append((inputs, cells))
    return out


def _write_inputs(work: Path, inputs) -> list[str]:
    names = []
    for k, img in enumerate(inputs):
        name = f"input_{k}{Path(img.name).suffix or '.png'}"
        (work / name).write_bytes(img.data)
        names.append(name)
    return names


def run_inprocess(trajs) -> list[float]:
    """(c): exec in this process, same globals as the sandbox; produced image files are read back."""
    from PIL import Image

    per_cell = []
    cwd = os.getcwd()
    for inputs, cells in trajs:
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)
            try:
                t0 = time.perf_counter()
                names = _write_inputs(Path(tmp), inputs)
                imgs = []
                for nm in names:
                    im = Image.open(nm)
                    im.load()
                    imgs.append(im)
                ns = {"__name__": "__main__", "image": imgs[0] if imgs else None, "images": imgs,
                      "image_paths": names, "work_dir": tmp}
                setup = time.perf_counter() - t0
                for code in cells:
                    before = {p.name: p.stat().st_mtime_ns for p in Path(tmp).iterdir()}
                    t = time.perf_counter()
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
                        exec(compile(code, "<cell>", "exec"), ns)
                    for p in Path(tmp).iterdir():
                        if p.suffix.lower() in (".png", ".jpg", ".jpeg") and before.get(p.name) != p.stat().st_mtime_ns:
                            p.read_bytes()
                    per_cell.append(time.perf_counter() - t + setup / len(cells))
            finally:
                os.chdir(cwd)
    return per_cell


def run_sandbox(trajs) -> list[float]:
    """(b): the pipeline's sandbox; per cell = its share of the whole replay() wall time."""
    from pipeline.sandbox import ZygoteSandbox

    uid = 60000 + os.getpid() % 5000
    per_cell = []
    with ZygoteSandbox(uid=uid, gid=uid) as box:
        box.replay(["x = 1"], [])  # start the zygote (once per actor in the pipeline)
        for inputs, cells in trajs:
            t0 = time.perf_counter()
            outs = box.replay(cells, inputs)
            wall = time.perf_counter() - t0
            own = [o.duration_ms / 1000 for o in outs]
            overhead = max(0.0, wall - sum(own)) / len(cells)
            per_cell.extend(x + overhead for x in own)
    return per_cell


def run_fresh(trajs, every: int) -> list[float]:
    """(a): one new interpreter per cell, importing the same libraries and re-running earlier cells."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", "HOME": tempfile.gettempdir(), "GLIBC_TUNABLES": MALLOC_TUNABLES}
    per_cell, k = [], 0
    for inputs, cells in trajs:
        for i in range(len(cells)):
            k += 1
            if k % every:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                names = _write_inputs(Path(tmp), inputs)
                script = PRELOAD + (
                    f"names = {names!r}\nimages = [Image.open(n) for n in names]\n"
                    "[im.load() for im in images]\nimage = images[0] if images else None\nimage_paths = names\n"
                    f"for code in {cells[: i + 1]!r}:\n"
                    "    try:\n        exec(code)\n    except Exception:\n        pass\n"
                )
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-c", script], cwd=tmp, env=env, capture_output=True, check=False)
                per_cell.append(time.perf_counter() - t0)
    return per_cell


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=160, help="corpus records (hostile ones are skipped)")
    ap.add_argument("--a-every", type=int, default=6, help="run design (a) on every k-th cell")
    args = ap.parse_args()
    if os.environ.get("GLIBC_TUNABLES") != MALLOC_TUNABLES:  # (c) runs in this process: same malloc
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "GLIBC_TUNABLES": MALLOC_TUNABLES})
    trajs = load_trajectories(args.n)
    n_cells = sum(len(c) for _, c in trajs)
    c = run_inprocess(trajs)
    b = run_sandbox(trajs)
    a = run_fresh(trajs, args.a_every)
    print(f"{len(trajs)} trajectories, {n_cells} real cells from the bundled corpus (design (a): {len(a)} of them)")
    for name, xs in (("(a) fresh interpreter per cell", a), ("(b) zygote sandbox", b), ("(c) in-process exec", c)):
        print(f"{name:34s} p50 {pct(xs, 0.5):8.1f} ms   p90 {pct(xs, 0.9):8.1f} ms   mean {statistics.mean(xs) * 1000:8.1f} ms")
    print(f"(a)/(b) per-cell p50: {pct(a, 0.5) / pct(b, 0.5):.1f}x   mean: {statistics.mean(a) / statistics.mean(b):.1f}x")
    print(f"(b) throughput / (c) throughput: {sum(c) / sum(b):.2f}")
    print(f"ceiling of (a)/(b) set by the cells' own work, (a)/(c) per-cell p50: {pct(a, 0.5) / pct(c, 0.5):.1f}x")
    print(f"sandbox cost per cell beyond (c): mean {(statistics.mean(b) - statistics.mean(c)) * 1000:.1f} ms; "
          f"fresh-interpreter cost beyond (c): mean {(statistics.mean(a) - statistics.mean(c)) * 1000:.1f} ms "
          f"({(statistics.mean(a) - statistics.mean(c)) / max(statistics.mean(b) - statistics.mean(c), 1e-6):.0f}x)")


if __name__ == "__main__":
    main()
