"""Writing a corpus to a folder (``build_sample_corpus``) and reusing one already written
(``ensure_sample_corpus``: a marker names what the folder holds; a lock lets one of several
concurrent callers build while the others wait)."""

from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from sample_corpus.plan import (
    CORPUS_FILE,
    CORPUS_VERSION,
    IMAGES_DIR,
    LABELS_FILE,
    LOCK_FILE,
    MARKER_FILE,
    case_plan,
)
from sample_corpus.trajectory import build_one


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
            record, label = build_one(i, discipline, case, seed, out_dir, Path(tmp))
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
