"""Driver memory stays flat while the corpus streams through Ray Data.

Generates N tiny records (a mix of the native, Thyme SFT and sharegpt formats, in JSONL and JSON
array files; every record points at one of a few shared small PNGs), then runs the ingest part of
the pipeline exactly as ``twi-curate run`` wires it (plan streamed to disk by the driver ->
optional light dedup key pass -> ingest read tasks on Ray workers, writing the image keys with
``--dedup`` -> Parquet, one Ray Data execution per window of ``ingest.tasks_per_window`` read
tasks -> with ``--dedup`` the grouping of the keys by DuckDB) and samples the DRIVER's resident memory
(/proc/self/status VmRSS every 20 ms, plus ru_maxrss). Each N runs in a fresh process so both
start from the same baseline; the ratio of the peaks (and of the growth after ``ray.init``) is
the number that matters.

    python bench/ingest_memory.py [--sizes 2000 20000] [--dedup]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakSampler(threading.Thread):
    def __init__(self, every_s: float = 0.02):
        super().__init__(daemon=True)
        self.every_s, self.peak, self.stop = every_s, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.every_s)


def write_corpus(folder: Path, n: int) -> None:
    """n tiny records over 4 shared 64x48 PNGs: 60% native JSONL, 20% Thyme SFT JSONL, 20%
    sharegpt in JSON array files (many files, as real corpora are split)."""
    from PIL import Image

    (folder / "img").mkdir(parents=True)
    for k in range(4):
        Image.new("RGB", (64, 48), (40 * k, 90, 200 - 40 * k)).save(folder / "img" / f"s{k}.png")
    per_file = 1000
    for start in range(0, n, per_file):
        count = min(per_file, n - start)
        kind = (start // per_file) % 5
        if kind < 3:
            with open(folder / f"native-{start:07d}.jsonl", "w") as fh:
                for i in range(start, start + count):
                    fh.write(json.dumps({
                        "question": f"What is {i} + 1?", "answer": str(i + 1), "images": [f"img/s{i % 4}.png"],
                        "turns": [{"reasoning": "Add one.", "code": f"print({i} + 1)", "observation": {"text": f"{i + 1}\n"}},
                                  {"reasoning": f"So it is {i + 1}."}],
                        "final_answer": str(i + 1)}) + "\n")
        elif kind == 3:
            with open(folder / f"thyme-{start:07d}.jsonl", "w") as fh:
                for i in range(start, start + count):
                    fh.write(json.dumps({
                        "image": [f"img/s{i % 4}.png"], "question": f"<image>\nWhat is {i} * 2?",
                        "response": f"<think>Double it.<code>\n```python\nprint({i} * 2)\n```\n</code>"
                                    f"<sandbox_output>{i * 2}</sandbox_output>It is {i * 2}.</think><answer>{i * 2}</answer>",
                    }) + "\n")
        else:
            records = [{
                "messages": [{"role": "user", "content": f"<image>\nWhat is {i} - 1?"},
                             {"role": "assistant", "content": f"<code>\n```python\nprint({i} - 1)\n```\n</code>"},
                             {"role": "user", "content": f"Code execution result:\nstdout:\n```\n{i - 1}\n```\n"},
                             {"role": "assistant", "content": f"It is {i - 1}. <answer>{i - 1}</answer>"}],
                "images": [f"img/s{i % 4}.png"]} for i in range(start, start + count)]
            (folder / f"sharegpt-{start:07d}.json").write_text(json.dumps(records))


def worker(corpus: Path, out: Path, dedup: bool) -> dict:
    sampler = PeakSampler()
    sampler.start()
    from pipeline.config import DedupConfig, RunConfig
    from pipeline.dedup_pass import dedup_verdicts
    from pipeline.ray_plan import TASK_CPUS, init_ray, task_concurrency
    from pipeline.stage import Resources, add_stage
    from pipeline.stages.dedup import (
        GROUPS_FILE,
        KEYS_DIR,
        attach_verdicts,
        compact_keys,
        key_files,
        post_verdicts,
    )
    from pipeline.stages.ingest import (
        IngestStage,
        discover_inputs,
        iter_read_tasks,
        read_plan,
        task_items,
        write_plan,
    )

    started = time.perf_counter()
    init_ray(quiet=True)
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    after_init = rss_mb()
    cfg = RunConfig(dedup=DedupConfig() if dedup else DedupConfig(exact=False, image_hamming=None))
    # exactly the run_pipeline wiring: plan streamed to disk, Ray executions window by window
    plan = out / "work" / "plan.jsonl"
    records, n_tasks = write_plan(iter_read_tasks(discover_inputs([corpus]), cfg.ingest.lines_per_task), plan)
    verdicts, counts, _ = dedup_verdicts(read_plan(plan, cfg.ingest.tasks_per_window), cfg, None, out / "work")
    keys_dir = out / "work" / KEYS_DIR if dedup else None  # image keys come out of the main pass's ingest
    ingest = IngestStage(cfg=cfg.ingest, resources=Resources(TASK_CPUS), batch_size=1, workers=task_concurrency())
    for k, window in enumerate(read_plan(plan, cfg.ingest.tasks_per_window)):
        ds = ray.data.from_items(task_items(attach_verdicts(window, verdicts)), override_num_blocks=len(window))
        add_stage(ds, ingest).write_parquet(str(out / "rows"))
        if keys_dir is not None:
            compact_keys(keys_dir, f"window-{k:06d}")
    if keys_dir is not None:  # the post-pass's grouping (best-of-N itself needs replayed, judged rows)
        post_verdicts(key_files(keys_dir), cfg.dedup, None, out / "work", groups_path=out / "work" / GROUPS_FILE)
    elapsed = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    written = sum(pq_rows(p) for p in (out / "rows").glob("*.parquet"))
    return {"records": records, "rows_written": written, "tasks": n_tasks, "dedup": counts,
            "rss_after_ray_init_mb": round(after_init, 1), "peak_rss_mb": round(sampler.peak, 1),
            "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "seconds": round(elapsed, 1)}


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--dedup", action="store_true", help="include the dedup key pass (all exact/near verdicts)")
    ap.add_argument("--worker", nargs=2, metavar=("CORPUS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), Path(args.worker[1]), args.dedup)))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            corpus = Path(tmp) / f"corpus{n}"
            write_corpus(corpus, n)
            cmd = [sys.executable, __file__, "--worker", str(corpus), str(Path(tmp) / f"out{n}")]
            proc = subprocess.run(cmd + (["--dedup"] if args.dedup else []), check=True, capture_output=True,
                                  text=True, env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
            results[n] = json.loads(proc.stdout.strip().splitlines()[-1])
            assert results[n]["rows_written"] == results[n]["records"] == n, results[n]
            print(f"N={n:>6}: {json.dumps(results[n])}", flush=True)
    lo, hi = min(args.sizes), max(args.sizes)
    a, b = results[lo], results[hi]
    print(f"driver peak RSS: {a['peak_rss_mb']:.1f} MB at {lo} records, {b['peak_rss_mb']:.1f} MB at {hi} records; "
          f"ratio {b['peak_rss_mb'] / a['peak_rss_mb']:.3f}")
    grow_a = a["peak_rss_mb"] - a["rss_after_ray_init_mb"]
    grow_b = b["peak_rss_mb"] - b["rss_after_ray_init_mb"]
    print(f"growth after ray.init: {grow_a:.1f} MB vs {grow_b:.1f} MB for {hi // lo}x the records")


if __name__ == "__main__":
    main()
