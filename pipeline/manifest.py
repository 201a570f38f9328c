"""The run manifest: counts read back from the written shards, so it proves what is on disk.

``replay_env`` counts the samples whose replay hit a gap of the replay environment (see
pipeline.stages.replay): ``{"samples": N, "by_kind": {"module": n, "tool": n, "file": n},
"gaps": {"module:networkx": 37, ...}, "gaps_not_listed": k}`` — samples per gap, most frequent
first, at most MAX_LISTED_GAPS listed. :func:`replay_env_advice` turns it into the lines the run
ends with: what is missing and what to do about it.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.config import RunConfig
from pipeline.tools.shards import VIEW, connect
from schemas import sample as S

MANIFEST = "manifest.json"
MAX_LISTED_GAPS = 100
_VERSIONED = ("twi-curate", "ray", "pyarrow", "duckdb", "numpy", "pillow", "opencv-python-headless",
              "scikit-image")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def shard_counts(out_dir: Path) -> dict[str, Any]:
    """Counts per route, route x discipline and reason, straight from the Parquet shards."""
    con = connect(out_dir)
    q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
    # the shards are read once, for the few columns counted (each query below would scan every file)
    cols = ", ".join((S.ROUTE, S.DISCIPLINE, S.ROUTE_REASONS, S.REPLAY_ENV, S.SOURCE, S.SAMPLE_ID))
    con.execute(f"CREATE TEMP TABLE counted AS SELECT {cols} FROM {VIEW}")
    routes = {r: 0 for r in S.ROUTES}
    routes.update(dict(q(f"SELECT {S.ROUTE}, count(*) FROM counted GROUP BY 1")))
    by_discipline: dict[str, dict[str, int]] = {}
    for d, r, n in q(f"SELECT {S.DISCIPLINE}, {S.ROUTE}, count(*) FROM counted GROUP BY 1, 2 ORDER BY 1, 2"):
        by_discipline.setdefault(d, {x: 0 for x in S.ROUTES})[r] = n
    reasons: dict[str, dict[str, int]] = {}
    for r, reason, n in q(
        f"SELECT {S.ROUTE}, reason, count(*) FROM (SELECT {S.ROUTE}, unnest({S.ROUTE_REASONS}) AS reason "
        f"FROM counted) GROUP BY 1, 2 ORDER BY 3 DESC, 2"
    ):
        reasons.setdefault(r, {})[reason] = n
    rejected_without_reason = q(
        f"SELECT count(*) FROM counted WHERE {S.ROUTE} = '{S.ROUTE_REJECTED}' AND len(coalesce({S.ROUTE_REASONS}, [])) = 0"
    )[0][0]
    total, distinct = q(f"SELECT count(*), count(DISTINCT {S.SAMPLE_ID}) FROM counted")[0]
    gap_rows = f"(SELECT {S.SOURCE} AS src, unnest({S.REPLAY_ENV}) AS gap FROM counted)"
    gaps = q(f"SELECT gap, count(DISTINCT src) FROM {gap_rows} GROUP BY 1 ORDER BY 2 DESC, 1")
    by_kind = dict(q(f"SELECT split_part(gap, ':', 1), count(DISTINCT src) FROM {gap_rows} GROUP BY 1 ORDER BY 1"))
    with_gap = q(f"SELECT count(*) FROM counted WHERE len(coalesce({S.REPLAY_ENV}, [])) > 0")[0][0]
    return {
        "output_records": total,
        "distinct_sample_ids": distinct,
        "routes": routes,
        "by_discipline": by_discipline,
        "reasons": reasons,
        "rejected_without_reason": rejected_without_reason,
        "replay_env": {
            "samples": with_gap,
            "by_kind": {k: by_kind.get(k, 0) for k in S.REPLAY_ENV_KINDS} | by_kind,
            "gaps": dict(gaps[:MAX_LISTED_GAPS]),
            "gaps_not_listed": max(0, len(gaps) - MAX_LISTED_GAPS),
        },
    }


# import name -> the package to install, where they differ
PIP_NAMES = {"cv2": "opencv-python-headless", "PIL": "pillow", "sklearn": "scikit-learn", "skimage": "scikit-image",
             "yaml": "pyyaml", "bs4": "beautifulsoup4", "fitz": "pymupdf", "Bio": "biopython", "rdkit": "rdkit"}


def replay_env_advice(manifest: dict[str, Any]) -> list[str]:
    """One line per replay-environment gap of a run (files summed up in one line): how many
    samples need it and what to do. [] when the replay lacked nothing."""
    env = manifest.get("replay_env") or {}
    gaps: dict[str, int] = env.get("gaps") or {}
    lines = []
    for gap, n in gaps.items():
        kind, _, name = gap.partition(":")
        samples, need = (f"{n} samples", "need") if n != 1 else ("1 sample", "needs")
        if kind == "module":
            pip = PIP_NAMES.get(name, name)
            lines.append(
                f"{samples} {need} module {name}: install it in the replay environment "
                f"(pip install {pip} in the venv the sandbox runs: {sys.executable} -m pip install {pip}) "
                "and rerun"
            )
        elif kind == "tool":
            lines.append(
                f"{samples} {need} tool function {name}: the trajectories call {name}(...), which their own "
                f"environment provided and the replay does not define; they were rejected with "
                f"replay_env:tool:{name} (replay them where {name} exists, or drop them)"
            )
    n_files = (env.get("by_kind") or {}).get("file", 0)
    if n_files:
        files = [g.partition(":")[2] for g in gaps if g.startswith("file:")]
        shown = ", ".join(files[:3]) + (", ..." if len(files) > 3 or env.get("gaps_not_listed") else "")
        what = f"{n_files} samples reference files that were" if n_files != 1 else "1 sample references a file that was"
        lines.append(
            f"{what} not found ({shown}): "
            "pass --image-root DIR (where relative paths and bare file names are looked up) or set "
            "ingest.path_map (old prefix -> new prefix) in the config, and rerun"
        )
    return lines


def judge_agreement(out_dir: Path, cfg: RunConfig) -> dict[str, Any]:
    """Per dimension where both a metric and an LLM judge scored: how well they agree.

    n, mean |metric - llm|, Pearson correlation, and the share of samples on the same side of the
    routing threshold of that dimension (both pass or both fail)."""
    thresholds = cfg.routing.thresholds()
    con = connect(out_dir)
    out: dict[str, Any] = {}
    for d in S.DIMENSIONS:
        m, lm = S.metric_score_column(d), S.llm_score_column(d)
        t = float(thresholds[d])
        n, mad, corr, same = con.execute(
            f"SELECT count(*), avg(abs({m} - {lm})), corr({m}, {lm}), "
            f"avg(CASE WHEN ({m} >= {t}) = ({lm} >= {t}) THEN 1.0 ELSE 0.0 END) "
            f"FROM {VIEW} WHERE {m} IS NOT NULL AND {lm} IS NOT NULL"
        ).fetchone()
        if n:
            out[d] = {"n": n, "mean_abs_diff": round(mad, 4),
                      "pearson": None if corr is None or corr != corr else round(corr, 4),
                      "same_side_of_threshold": round(same, 4)}
    return out


def llm_failure(counters: dict[str, Any], max_error_rate: float) -> dict[str, Any]:
    """``judges.llm.failure``: how this run's LLM judgements went, from the usage counters of every
    actor and the run-wide guard (judges.llm.JudgeGuard). A judgement is a (sample, dimension)
    answered (ok), served from the cache, or failed (judge_error:<kind>, metric score kept).
    ``failed`` (error_rate > max_error_rate) makes `twi-curate run` end with exit code 5."""
    usage = counters.get("llm") or {}
    guard = counters.get("llm_guard") or {}
    errors = sum(u.get("errors", 0) for u in usage.values())
    judgements = sum(u.get("ok", 0) + u.get("cache_hits", 0) + u.get("errors", 0) for u in usage.values())
    by_kind: dict[str, int] = {}
    for u in usage.values():
        for kind, n in (u.get("errors_by_kind") or {}).items():
            by_kind[kind] = by_kind.get(kind, 0) + n
    rate = errors / judgements if judgements else 0.0
    return {
        "failed": rate > max_error_rate,
        "error_rate": round(rate, 4),
        "max_error_rate": max_error_rate,
        "judgements": judgements,
        "errors": errors,
        "by_kind": dict(sorted(by_kind.items(), key=lambda kv: (-kv[1], kv[0]))),
        "example": guard.get("example"),
        "stopped_early": guard.get("stopped") is not None,
        "reason": guard.get("reason"),
    }


def build_manifest(
    out_dir: Path,
    run_id: str,
    cfg: RunConfig,
    inputs: list[str],
    input_records: int,
    timings: dict[str, Any],
    started: float,
    counters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    counts = shard_counts(out_dir)
    llm = cfg.judges.llm
    judges = {
        "metric": list(S.DIMENSIONS),
        "llm": {"endpoint": llm.endpoint, "model": llm.model, "dimensions": llm.dimensions,
                "usage": (counters or {}).get("llm", {}),
                "failure": llm_failure(counters or {}, llm.max_error_rate)} if llm.enabled else None,
        "agreement": judge_agreement(out_dir, cfg) if llm.enabled else {},
    }
    conserved = sum(counts["routes"].values()) == input_records == counts["output_records"]
    total_s = round(time.time() - started, 3)
    return {
        "run_id": run_id,
        "config_hash": cfg.config_hash(),
        "config": cfg.model_dump(mode="json"),
        "inputs": inputs,
        "input_records": input_records,
        **counts,
        "conservation": {
            "ok": conserved and counts["rejected_without_reason"] == 0,
            "rule": "routes.twi + routes.text + routes.rejected == input_records == rows in shards",
        },
        "judges": judges,
        "versions": _versions(),
        "timings": {**timings, "total_s": total_s},
        # the whole run's throughput (Ray start and every pass included); per stage: timings.stages
        "samples_per_s": round(input_records / total_s, 3) if total_s > 0 else None,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
    }


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    path = Path(out_dir) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False))
    tmp.replace(path)
    return path


def read_manifest(out_dir: Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / MANIFEST).read_text())
