"""Dedup and decontamination: exact and near duplicates, benchmark overlap, deterministic whatever
the partitioning, and the verdicts reaching routing as reasons in a real Ray run."""

from __future__ import annotations

import io
import json
import random

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import DedupConfig, IngestConfig, RunConfig
from pipeline.dedup import (
    KEY_SCHEMA,
    BenchmarkError,
    hamming,
    image_keys,
    key_row,
    load_benchmark,
    normalize_question,
    thumb_diff,
)
from pipeline.dedup import find_verdicts as _find_verdicts
from pipeline.ingest import plan_read_tasks, read_task
from pipeline.run import dedup_tasks, run_pipeline
from schemas import sample as S
from tests.format_fixtures import label_image
from tests.images import png

CFG = IngestConfig()


def jpeg(im) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def native(question: str, image: str) -> dict:
    return {"question": question, "answer": "42", "images": [image],
            "turns": [{"reasoning": "The label in the box reads 42 once enlarged.", "code": None}], "final_answer": "42"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """a.jsonl: r1, r2, r1 again (exact duplicate). b.jsonl: r1's image re-encoded as JPEG with
    another question (near duplicate), a benchmark question in other words, a benchmark image."""
    root = tmp_path_factory.mktemp("dedup")
    (root / "in").mkdir()
    (root / "in" / "img").mkdir()
    imgs = {k: label_image(seed=s) for k, s in (("A", 11), ("B", 12), ("C", 13), ("D", 14))}
    for k, im in imgs.items():
        (root / "in" / "img" / f"{k}.png").write_bytes(png(im))
    (root / "in" / "img" / "A.jpg").write_bytes(jpeg(imgs["A"]))
    (root / "in" / "img" / "D.jpg").write_bytes(jpeg(imgs["D"]))
    r1 = native("What number is written in the small box?", "img/A.png")
    r2 = native("What value does the gauge in the box show?", "img/B.png")
    (root / "in" / "a.jsonl").write_text("\n".join(json.dumps(r) for r in (r1, r2, r1)) + "\n")
    b = [native("Which digit pair is printed at the top right?", "img/A.jpg"),
         native("<image>\nHow many triangles are in the FIGURE ?", "img/C.png"),
         native("Read the label in the box.", "img/D.jpg")]
    (root / "in" / "b.jsonl").write_text("\n".join(json.dumps(r) for r in b) + "\n")
    (root / "bench").mkdir()
    (root / "bench" / "D.png").write_bytes(png(imgs["D"]))
    (root / "bench" / "benchmark.jsonl").write_text(
        json.dumps({"name": "MathVista", "question": "how many triangles are in the figure?"}) + "\n"
        + json.dumps({"name": "ChartQA", "image": "D.png"}) + "\n"
        + json.dumps({"name": "Other", "question": "Something else entirely"}) + "\n"
    )
    return root


def key_rows(root) -> list[dict]:
    tasks = plan_read_tasks([root / "in" / "a.jsonl", root / "in" / "b.jsonl"], 2)
    return [k for t in tasks for r in read_task(t, CFG) if (k := key_row(r))]


DEFAULT = DedupConfig()


def find_verdicts(tmp_path, rows, cfg=DEFAULT, bench=None, parts=1, seed=0):
    """Write key rows shuffled into ``parts`` Parquet files (as Ray would, in any order)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    files = []
    for p in range(parts):
        f = tmp_path / f"keys-{seed}-{parts}-{p}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[p::parts], schema=KEY_SCHEMA), f)
        files.append(str(f))
    return _find_verdicts(files, cfg, bench)


def test_image_keys_see_reencodes_as_near_and_other_pages_as_far():
    a, b = label_image(seed=11), label_image(seed=12)
    ka, kj, kb = image_keys(png(a)), image_keys(jpeg(a)), image_keys(png(b))
    assert hamming(ka[0], kj[0]) <= 4 and thumb_diff(ka[1], kj[1]) <= 0.5
    assert hamming(ka[0], kb[0]) > 4 or thumb_diff(ka[1], kb[1]) > 0.5
    assert normalize_question("<image>\nHow many TRIANGLES are in the figure ?") == "how many triangles are in the figure"


def test_verdicts(corpus, tmp_path):
    keys = key_rows(corpus)
    sid = {(k["file"].rsplit("/", 1)[1], k["idx"]): k["sample_id"] for k in keys}
    bench = load_benchmark(corpus / "bench" / "benchmark.jsonl", CFG)
    v = find_verdicts(tmp_path, keys, bench=bench)
    got = {(f.rsplit("/", 1)[1], i): verdict for (f, i), verdict in v.items()}
    assert got == {
        ("a.jsonl", 2): {S.DUPLICATE_OF: sid[("a.jsonl", 0)]},  # exact
        ("b.jsonl", 0): {S.DUPLICATE_OF: sid[("a.jsonl", 0)]},  # near: A re-encoded
        ("b.jsonl", 1): {S.CONTAMINATED_BY: ["MathVista"]},  # question, other case/spacing/tags
        ("b.jsonl", 2): {S.CONTAMINATED_BY: ["ChartQA"]},  # benchmark image re-encoded
    }
    off = find_verdicts(tmp_path, keys, DedupConfig(exact=False, image_hamming=None))
    assert off == {}


def test_verdicts_do_not_depend_on_partitioning_or_order(corpus, tmp_path):
    keys = key_rows(corpus)
    bench = load_benchmark(corpus / "bench" / "benchmark.jsonl", CFG)
    runs = [find_verdicts(tmp_path, keys, bench=bench, parts=p, seed=s) for p, s in ((1, 0), (3, 1), (5, 2), (2, 3))]
    assert all(r == runs[0] for r in runs)


def test_near_duplicate_chains_keep_the_first_of_each_cluster(tmp_path):
    """a~b and b~c but not a~c: visiting in (file, idx) order keeps a, drops b, keeps c."""
    thumb = bytes(1024)
    rows = [{"sample_id": s, "file": "f", "idx": i, "phash": h, "thumb": thumb, "qkey": None}
            for i, (s, h) in enumerate((("a", 0), ("b", 0b111), ("c", 0b111111), ("d", 0)))]
    v = find_verdicts(tmp_path, rows, DedupConfig(image_hamming=4))
    assert v == {("f", 1): {S.DUPLICATE_OF: "a"}, ("f", 3): {S.DUPLICATE_OF: "a"}}
    far_thumb = bytes([200]) * 1024  # same pHash, different picture: the thumbnail check vetoes
    rows[1]["thumb"] = far_thumb
    assert ("f", 1) not in find_verdicts(tmp_path, rows, DedupConfig(image_hamming=4))


def test_many_copies_of_one_image_cost_one_comparison(tmp_path):
    rows = [{"sample_id": f"s{i}", "file": "f", "idx": i, "phash": 12345, "thumb": bytes(1024), "qkey": None}
            for i in range(5000)]
    v = find_verdicts(tmp_path, rows)
    assert len(v) == 4999 and all(x == {S.DUPLICATE_OF: "s0"} for x in v.values())


def test_benchmark_file_errors_say_where(tmp_path):
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_benchmark(tmp_path / "nope.jsonl", CFG)
    f = tmp_path / "b.jsonl"
    f.write_text('{"name": "X", "question": "q"}\n{"question": "no name"}\n')
    with pytest.raises(BenchmarkError, match=r"b\.jsonl:2"):
        load_benchmark(f, CFG)
    f.write_text('{"name": "X", "image": "missing.png"}\n')
    with pytest.raises(BenchmarkError, match="image unusable"):
        load_benchmark(f, CFG)
    result = CliRunner().invoke(app, ["run", str(f), "--benchmark", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "does not exist" in " ".join(result.output.split())


@pytest.mark.timeout(900)
def test_ray_run_routes_duplicates_and_contamination(ray_local, corpus, tmp_path):
    cfg = RunConfig()
    bench = load_benchmark(corpus / "bench" / "benchmark.jsonl", CFG)
    flags = []
    for per_task in (1, 4):  # the key pass gives the same verdicts however the work is cut
        tasks = plan_read_tasks([corpus / "in" / "a.jsonl", corpus / "in" / "b.jsonl"], per_task)
        flagged, counts = dedup_tasks(tasks, cfg, bench, tmp_path / f"work{per_task}")
        flags.append({(t.file, int(i)): v for t in flagged if t.flags for i, v in json.loads(t.flags).items()})
        assert counts == {"duplicates": 2, "contaminated": 2}
    assert flags[0] == flags[1]

    out = tmp_path / "out"
    manifest = run_pipeline([corpus / "in"], out, cfg, quiet=True, benchmark=corpus / "bench" / "benchmark.jsonl")
    assert manifest["conservation"]["ok"] and manifest["input_records"] == 6
    assert manifest["dedup"] == {"duplicates": 2, "contaminated": 2}
    rows = duckdb.connect().execute(
        f"SELECT {S.SOURCE}, {S.SAMPLE_ID}, {S.ROUTE}, {S.ROUTE_REASONS} "
        f"FROM read_parquet('{out}/shards/**/*.parquet', hive_partitioning = true)"
    ).fetchall()
    got = {(src[S.SRC_FILE].rsplit("/", 1)[1], src[S.SRC_INDEX]): (sid, route, reasons) for src, sid, route, reasons in rows}
    first = got[("a.jsonl", 0)][0]
    assert got[("a.jsonl", 2)][1:] == ("rejected", [f"duplicate_of:{first}"])
    assert got[("b.jsonl", 0)][1] == "rejected" and f"duplicate_of:{first}" in got[("b.jsonl", 0)][2]
    assert "contaminated:MathVista" in got[("b.jsonl", 1)][2] and got[("b.jsonl", 1)][1] == "rejected"
    assert "contaminated:ChartQA" in got[("b.jsonl", 2)][2] and got[("b.jsonl", 2)][1] == "rejected"
    for key in (("a.jsonl", 0), ("a.jsonl", 1)):
        assert not any(r.startswith(("duplicate_of", "contaminated")) for r in got[key][2])
