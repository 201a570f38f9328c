"""The pipeline on real published records (../shared/real-data): per source, how many records,
how many were recognised, how many replayed ok, their routes and top reasons.

    python bench/real_data.py [--real-data DIR] [--stand-ins] [--out DIR] [--json FILE]

Without ``--stand-ins`` the records run as published: their images were not published with them
(DeepEyes' V* images, Pixel-Reasoner's author-machine paths), so they are ``missing_image``
naming the path looked for. With ``--stand-ins`` the images are drawn (tests/stand_ins.py) and
the run points at them with ``--image-root`` (DeepEyes file names) and ``ingest.path_map``
(Pixel-Reasoner's absolute paths), so the zooms replay.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

# `python bench/real_data.py` puts bench/ first on sys.path: look up the project instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

QUERY = """
WITH rows AS (
  SELECT regexp_extract(source.file, 'real-data/([^/]+)/', 1) AS src, *
  FROM read_parquet('{shards}/**/*.parquet', hive_partitioning = true)
)
SELECT src,
       count(*) AS records,
       count(*) FILTER (WHERE coalesce(input_error, '') <> 'unknown_format') AS recognised,
       count(*) FILTER (WHERE replay_status = 'ok') AS replayed_ok,
       count(*) FILTER (WHERE route = 'twi') AS twi,
       count(*) FILTER (WHERE route = 'text') AS text,
       count(*) FILTER (WHERE route = 'rejected') AS rejected
FROM rows GROUP BY src ORDER BY src
"""
REASONS = """
WITH rows AS (
  SELECT regexp_extract(source.file, 'real-data/([^/]+)/', 1) AS src, unnest(route_reasons) AS reason
  FROM read_parquet('{shards}/**/*.parquet', hive_partitioning = true)
)
SELECT src, regexp_replace(reason, '(duplicate_of):.*', '\\1') AS reason, count(*) AS n
FROM rows GROUP BY ALL ORDER BY src, n DESC, reason
"""


def summarize(out: Path) -> dict[str, dict]:
    import duckdb

    shards = out / "shards"
    con = duckdb.connect()
    cols = ["records", "recognised", "replayed_ok", "twi", "text", "rejected"]
    summary = {row[0]: dict(zip(cols, row[1:], strict=True)) for row in con.sql(QUERY.format(shards=shards)).fetchall()}
    for src, reason, n in con.sql(REASONS.format(shards=shards)).fetchall():
        top = summary[src].setdefault("top_reasons", [])
        if len(top) < 5:
            top.append([reason, n])
    return summary


def main() -> None:
    from tests.stand_ins import deepeyes_stand_ins, pixel_reasoner_stand_ins, real_data_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real-data", type=Path, default=real_data_dir())
    ap.add_argument("--stand-ins", action="store_true", help="draw the unpublished images and point the run at them")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="write the per-source summary here")
    args = ap.parse_args()
    if not args.real_data.is_dir():
        sys.exit(f"{args.real_data} does not exist: pass --real-data DIR (or set TWI_REAL_DATA)")

    from pipeline.config import RunConfig
    from pipeline.run import run_pipeline

    work = Path(tempfile.mkdtemp(prefix="twi-real-"))
    out = args.out or work / "out"
    cfg = RunConfig()
    if args.stand_ins:
        root = deepeyes_stand_ins(args.real_data / "deepeyes" / "result_direct_attributes_tmp_acc.jsonl", work / "vstar")
        path_map = pixel_reasoner_stand_ins(args.real_data / "pixel_reasoner" / "train338cross.json", work / "eds")
        ingest = cfg.ingest.model_copy(update={"image_roots": [root], "path_map": path_map})
        cfg = cfg.model_copy(update={"ingest": ingest})
    start = time.perf_counter()
    manifest = run_pipeline([args.real_data], out, cfg, quiet=True)
    seconds = time.perf_counter() - start
    summary = summarize(out)
    print(f"real data: {args.real_data} ({'stand-in images' if args.stand_ins else 'as published'}), "
          f"{manifest['input_records']} records in {seconds:.0f} s, conservation "
          f"{'ok' if manifest['conservation']['ok'] else 'FAILED'}; shards in {out}")
    print(f"{'source':<16}{'records':>8}{'recognised':>11}{'replay ok':>10}{'twi':>6}{'text':>6}{'rejected':>9}  top reasons")
    for src, s in summary.items():
        reasons = ", ".join(f"{r} ({n})" for r, n in s.get("top_reasons", []))
        print(f"{src:<16}{s['records']:>8}{s['recognised']:>11}{s['replayed_ok']:>10}{s['twi']:>6}{s['text']:>6}"
              f"{s['rejected']:>9}  {reasons}")
    if args.json:
        args.json.write_text(json.dumps({"stand_ins": args.stand_ins, "seconds": seconds, "sources": summary}, indent=2))


if __name__ == "__main__":
    main()
