"""Dedup, best-of-N and decontamination: exact duplicates, (image, question) groups compared at the
detail that matters, benchmark overlap, determinism whatever the partitioning, and best-of-N in a
real Ray run (rollouts of one question: the best kept, the others duplicate_of it, scores kept)."""

from __future__ import annotations

import io
import json
import random
from dataclasses import asdict

import duckdb
import matplotlib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from judges.visual_gain import PREPARED_CACHE, VisualGainJudge
from pipeline.cli import app
from pipeline.config import DedupConfig, IngestConfig, RunConfig
from pipeline.dedup_pass import dedup_verdicts
from pipeline.run import run_pipeline
from pipeline.stage import Resources
from pipeline.stages.best_of_n import QUALITY_WEIGHTS, ROUTE_TIER, quality
from pipeline.stages.dedup import (
    KEY_SCHEMA,
    PENDING_DIR,
    BenchmarkError,
    attach_verdicts,
    compact_keys,
    detail_diff,
    hamming,
    image_keys,
    key_files,
    key_row,
    load_benchmark,
    normalize_question,
    post_verdicts,
    read_groups,
    write_block_keys,
)
from pipeline.stages.dedup import find_verdicts as _find_verdicts
from pipeline.stages.ingest import IngestStage, plan_read_tasks, read_task
from pipeline.stages.judge import JudgeStage
from pipeline.tools.shards import SHARDS_DIR
from schemas import sample as S
from tests.format_fixtures import BOX, crop_zoom, label_image
from tests.images import png

matplotlib.use("Agg")
CFG = IngestConfig()
DEFAULT = DedupConfig()
Q_LABEL = "What number is written in the small box?"


def jpeg(im, quality=85) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def third(im) -> Image.Image:
    return im.resize((im.width // 3, im.height // 3), Image.Resampling.LANCZOS)


def plot(label: str, seed: int = 0) -> Image.Image:
    """An 800x600 matplotlib plot with one small (7 pt) annotation."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    x = np.linspace(0, 10, 60)
    ax.plot(x, np.sin(x + rng.random()) * 3 + 5)
    ax.set_title("Titration curve")
    ax.annotate(label, (6, 4), fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def native(question: str, image: str, answer: str = "42") -> dict:
    return {"question": question, "answer": answer, "images": [image],
            "turns": [{"reasoning": "The label in the box reads 42 once enlarged.", "code": None}], "final_answer": answer}


def detail_pairs():
    """(name, a, b, same image?) pairs drawn here: re-encodes and downscales vs small label changes."""
    pairs = []
    for s in range(3):
        a, b = label_image("42", seed=s), label_image("47", seed=s)
        pairs += [(f"page{s} jpeg q85", png(a), jpeg(a), True), (f"page{s} jpeg q75", png(a), jpeg(a, 75), True),
                  (f"page{s} 1/3 downscale", png(a), png(third(a)), True),
                  (f"page{s} jpeg vs 1/3", jpeg(a), png(third(a)), True),
                  (f"page{s} 1/3 then jpeg", png(a), jpeg(third(a)), True),
                  (f"page{s} label 42/47", png(a), png(b), False),
                  (f"page{s} label 42/4.2", png(a), png(label_image("4.2", seed=s)), False),
                  (f"page{s} label 42/47 jpeg", png(a), jpeg(b), False)]
        p, q = plot("x = 3.7", s), plot("x = 3.1", s)
        pairs += [(f"plot{s} jpeg", png(p), jpeg(p), True), (f"plot{s} 1/3 downscale", png(p), png(third(p)), True),
                  (f"plot{s} jpeg vs 1/3", jpeg(p), png(third(p)), True),
                  (f"plot{s} label 3.7/3.1", png(p), png(q), False),
                  (f"plot{s} label 3.7/3.1 jpeg", png(p), jpeg(q), False),
                  (f"plot{s} label/none", png(p), png(plot("", s)), False)]
    return pairs


def test_detail_sees_small_labels_and_ignores_reencodes():
    threshold = DEFAULT.image_max_tile_diff
    same, diff = [], []
    print(f"\n{'pair':32s} {'pHash bits':>10s} {'tile diff':>9s}")
    for name, a, b, is_same in detail_pairs():
        ka, kb = image_keys(a), image_keys(b)
        d = detail_diff(ka.detail, kb.detail)
        (same if is_same else diff).append(d)
        print(f"{name:32s} {hamming(ka.phash, kb.phash):10d} {d:9.2f}")
        if is_same:
            assert hamming(ka.phash, kb.phash) <= DEFAULT.image_hamming, name
    print(f"same image: max {max(same):.2f}; different label: min {min(diff):.2f}; threshold {threshold}")
    assert max(same) < threshold < min(diff)
    assert normalize_question("<image>\nHow many TRIANGLES are in the figure ?") == "how many triangles are in the figure"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """a.jsonl: r1 (page A), r2 (page B), r1 again (exact duplicate), page A with another
    question. b.jsonl: A as JPEG and A at 1/3 (same question as r1: one group with r1), a
    benchmark question in other words, a benchmark image re-encoded, two plots differing only by a
    small label (same question)."""
    root = tmp_path_factory.mktemp("dedup")
    img = root / "in" / "img"
    img.mkdir(parents=True)
    pages = {k: label_image(seed=s) for k, s in (("A", 11), ("B", 12), ("C", 13), ("D", 14))}
    for k, im in pages.items():
        (img / f"{k}.png").write_bytes(png(im))
    (img / "A.jpg").write_bytes(jpeg(pages["A"]))
    (img / "A3.png").write_bytes(png(third(pages["A"])))
    (img / "D.jpg").write_bytes(jpeg(pages["D"]))
    (img / "P1.png").write_bytes(png(plot("x = 3.7", 5)))
    (img / "P2.png").write_bytes(png(plot("x = 3.1", 5)))
    r1 = native(Q_LABEL, "img/A.png")
    a = [r1, native("What value does the gauge in the box show?", "img/B.png"), r1,
         native("Which digit pair is printed at the top right?", "img/A.png")]
    (root / "in" / "a.jsonl").write_text("\n".join(json.dumps(r) for r in a) + "\n")
    b = [native(Q_LABEL.upper(), "img/A.jpg"), native(Q_LABEL, "img/A3.png"),
         native("<image>\nHow many triangles are in the FIGURE ?", "img/C.png"),
         native("Read the label in the box.", "img/D.jpg"),
         native("What is the value of x at the marked point?", "img/P1.png", "3.7"),
         native("What is the value of x at the marked point?", "img/P2.png", "3.1")]
    (root / "in" / "b.jsonl").write_text("\n".join(json.dumps(r) for r in b) + "\n")
    (root / "bench").mkdir()
    (root / "bench" / "D.png").write_bytes(png(pages["D"]))
    (root / "bench" / "benchmark.jsonl").write_text(
        json.dumps({"name": "MathVista", "question": "how many triangles are in the figure?"}) + "\n"
        + json.dumps({"name": "ChartQA", "image": "D.png"}) + "\n"
        + json.dumps({"name": "Other", "question": "Something else entirely"}) + "\n"
    )
    return root


def key_rows(root, files=("a.jsonl", "b.jsonl")) -> list[dict]:
    tasks = plan_read_tasks([root / "in" / f for f in files], 2)
    return [k for t in tasks for r in read_task(t, CFG) if (k := key_row(r))]


def find_verdicts(tmp_path, rows, cfg=DEFAULT, bench=None, parts=1, seed=0):
    """Write key rows shuffled into ``parts`` Parquet files (as Ray would, in any order);
    returns (verdicts, groups as {(file, idx): group})."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    files = []
    for p in range(parts):
        f = tmp_path / f"keys-{seed}-{parts}-{p}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[p::parts], schema=KEY_SCHEMA), f)
        files.append(str(f))
    groups = tmp_path / f"groups-{seed}-{parts}.parquet"
    return _find_verdicts(files, cfg, bench, groups_path=groups), read_groups(groups)


def short(d):
    return {(f.rsplit("/", 1)[1], i): v for (f, i), v in d.items()}


def test_verdicts_and_groups(corpus, tmp_path):
    keys = key_rows(corpus)
    sid = {(k["file"].rsplit("/", 1)[1], k["idx"]): k["sample_id"] for k in keys}
    bench = load_benchmark(corpus / "bench" / "benchmark.jsonl", CFG)
    v, groups = find_verdicts(tmp_path, keys, bench=bench)
    assert short(v) == {
        ("a.jsonl", 2): {S.DUPLICATE_OF: sid[("a.jsonl", 0)]},  # exact
        ("b.jsonl", 2): {S.CONTAMINATED_BY: ["MathVista"]},  # question, other case/spacing/tags
        ("b.jsonl", 3): {S.CONTAMINATED_BY: ["ChartQA"]},  # benchmark image re-encoded
    }
    # one group: r1, its JPEG re-encode and its 1/3 downscale, asked the same question (any case);
    # not the exact duplicate, not the other question on image A, not the plots with another label
    assert short(groups) == {k: sid[("a.jsonl", 0)] for k in (("a.jsonl", 0), ("b.jsonl", 0), ("b.jsonl", 1))}
    v_off, g_off = find_verdicts(tmp_path, keys, DedupConfig(exact=False, image_hamming=None))
    assert v_off == {}
    # without the image comparison only identical bytes group: r1 and its exact copy
    assert short(g_off) == {("a.jsonl", 0): sid[("a.jsonl", 0)], ("a.jsonl", 2): sid[("a.jsonl", 0)]}


def test_verdicts_do_not_depend_on_partitioning_or_order(corpus, tmp_path):
    keys = key_rows(corpus)
    bench = load_benchmark(corpus / "bench" / "benchmark.jsonl", CFG)
    runs = [find_verdicts(tmp_path, keys, bench=bench, parts=p, seed=s) for p, s in ((1, 0), (3, 1), (5, 2), (2, 3))]
    assert all(r == runs[0] for r in runs)


def test_light_pre_pass_and_main_pass_keys_give_the_same_verdicts(corpus, tmp_path):
    """The wiring of a run: the light pre-pass (parse only, no image decoded) finds the exact
    duplicates; the main pass's judge stage writes the full keys of the other records from the
    visual-gain judge's decode (one file per block, compacted per window); the post-pass then
    finds the same groups and benchmark overlap as one pass over every full key."""
    bench = load_benchmark(corpus / "bench" / "benchmark.jsonl", CFG)
    tasks = plan_read_tasks([corpus / "in" / f for f in ("a.jsonl", "b.jsonl")], 2)
    full = key_rows(corpus)
    light = [k for t in tasks for r in read_task(t, CFG) if (k := key_row(r, images=False))]
    assert all(k["phash"] is None and k["aspect"] is None and k["detail"] is None for k in light)
    assert [{c: k[c] for c in ("sample_id", "file", "idx", "qkey", "isha")} for k in full] == [
        {c: k[c] for c in ("sample_id", "file", "idx", "qkey", "isha")} for k in light]
    reference, reference_groups = find_verdicts(tmp_path, full, bench=bench)
    exact, _ = find_verdicts(tmp_path, light)
    assert exact == {k: v for k, v in reference.items() if S.DUPLICATE_OF in v} and len(exact) == 1

    keys_dir, rows = tmp_path / "keys", []
    flagged = attach_verdicts(tasks, exact)
    judge = VisualGainJudge()
    for w, window in enumerate((flagged[:2], flagged[2:])):
        blocks = 0
        for task in window:
            block = IngestStage(cfg=CFG, resources=Resources(0.25)).process([asdict(task)])
            written = [write_block_keys(block, keys_dir, judge.grey) for _ in range(2)]  # 2nd: a retried block
            assert written[0] == written[1] == sum(1 for r in block if not r[S.INPUT_ERROR] and not r[S.DUPLICATE_OF])
            blocks += bool(written[0])
            rows += block
        # the retry replaced its block's file instead of adding a second copy of the keys
        assert len(list((keys_dir / PENDING_DIR).glob("*"))) == blocks
        compact_keys(keys_dir, f"window-{w}")
    assert len(rows) == 10 and not list((keys_dir / PENDING_DIR).glob("*"))  # one row per record
    assert [(r[S.SOURCE][S.SRC_FILE], r[S.SOURCE][S.SRC_INDEX]) for r in rows if r[S.DUPLICATE_OF]] == list(exact)
    written = pq.read_table(key_files(keys_dir)).to_pylist()
    # every record but the exact duplicate, with its image keys
    assert sorted((k["file"], k["idx"]) for k in written) == sorted({(k["file"], k["idx"]) for k in full} - set(exact))
    assert all(k["phash"] is not None and k["detail"] for k in written)
    groups = tmp_path / "post-groups.parquet"
    contaminated = post_verdicts(key_files(keys_dir), DEFAULT, bench, tmp_path, groups_path=groups)
    assert read_groups(groups) == reference_groups and len(reference_groups) == 3
    sid = {(k["file"], k["idx"]): k["sample_id"] for k in full}
    assert contaminated == {sid[k]: v[S.CONTAMINATED_BY] for k, v in reference.items() if S.CONTAMINATED_BY in v}
    assert sorted(n for names in contaminated.values() for n in names) == ["ChartQA", "MathVista"]


def test_block_keys_come_from_the_replays_greys_however_many_images_the_block_holds(corpus, tmp_path):
    """The judge stage computes a block's keys from the grey pixels the replay handed over
    (S.INPUT_GREYS), not from the visual-gain judge's cache of recent inputs (PREPARED_CACHE
    of them): a block with more images than that re-decoded the evicted ones (3x the judges'
    CPU with 8-record read tasks). The rows' image bytes are made undecodable after ingest, so
    any decode for a key would leave that key without its pHash."""
    rows = [r for t in plan_read_tasks([corpus / "in" / f for f in ("a.jsonl", "b.jsonl")], 2)
            for r in read_task(t, CFG)]
    assert len({r[S.IMAGES][0][S.IMG_SHA256] for r in rows}) > PREPARED_CACHE
    expected = {}
    for r in rows:
        first = r[S.IMAGES][0]
        expected[r[S.SAMPLE_ID]] = image_keys(first[S.IMG_BYTES])
        with Image.open(io.BytesIO(first[S.IMG_BYTES])) as im:  # what the sandbox hands over
            r[S.INPUT_GREYS] = [np.asarray(im.convert("L"))]
        first[S.IMG_BYTES] = b"\x89PNG\r\n\x1a\n not decodable any more"
    stage = JudgeStage(judges_factory=lambda: [VisualGainJudge()], resources=Resources(0.5),
                       keys_dir=str(tmp_path / "keys"))
    stage.setup(None)
    stage.process(rows)
    written = pq.read_table(list((tmp_path / "keys" / PENDING_DIR).glob("*.parquet"))).to_pylist()
    assert sorted(k["sample_id"] for k in written) == sorted(r[S.SAMPLE_ID] for r in rows)
    for k in written:
        want = expected[k["sample_id"]]
        assert (k["phash"], k["aspect"], k["detail"]) == (want.phash, want.aspect, want.detail), k["sample_id"]


def test_near_image_chains_group_with_the_first_leader(tmp_path):
    """a~b and b~c but not a~c (pHash bits 3, 3, 6): greedy in (file, idx) order gives {a, b, d}
    and c alone (no group); another question never joins."""
    detail = image_keys(png(label_image(seed=3))).detail
    rows = [{"sample_id": s, "file": "f", "idx": i, "qkey": q, "isha": s, "phash": h, "aspect": 4 / 3, "detail": detail}
            for i, (s, h, q) in enumerate((("a", 0, "q"), ("b", 0b111, "q"), ("c", 0b111111, "q"), ("d", 0, "q"),
                                           ("e", 0, "other")))]
    _, g = find_verdicts(tmp_path, rows, DedupConfig(image_hamming=4))
    assert g == {("f", 0): "a", ("f", 1): "a", ("f", 3): "a"}
    far = image_keys(png(label_image("47", seed=3))).detail  # b: same pHash, another label: vetoed
    rows[1]["detail"] = far
    _, g = find_verdicts(tmp_path, rows, DedupConfig(image_hamming=4))
    assert g == {("f", 0): "a", ("f", 3): "a"}  # c is 6 bits from a and another picture than b


def test_many_rollouts_of_one_image_cost_no_comparison(tmp_path):
    rows = [{"sample_id": f"s{i:04d}", "file": "f", "idx": i, "qkey": "q", "isha": "x", "phash": 12345,
             "aspect": 1.0, "detail": b"not an image: never decoded"} for i in range(5000)]
    v, g = find_verdicts(tmp_path, rows)
    assert v == {} and len(g) == 5000 and set(g.values()) == {"s0000"}


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


def test_quality_leaves_null_scores_out():
    row = {S.score_column(d): None for d in S.DIMENSIONS}
    assert quality(row) is None
    row[S.score_column("coherence")] = 0.5
    assert quality(row) == 0.5
    row[S.score_column("code_correctness")] = 1.0
    w = QUALITY_WEIGHTS
    assert quality(row) == pytest.approx((0.5 * w["coherence"] + 1.0 * w["code_correctness"]) / (w["coherence"] + w["code_correctness"]))


ROLLOUT_Q = "What current does the ammeter label in the small box show, in amperes?"
ZOOM2 = "crop = image.crop((440, 20, 600, 100)).resize((320, 160))\ncrop.save('zoom.png')\nprint(crop.size)\n"


def rollouts(root) -> list[dict]:
    """Four rollouts of one question on one page (RL sampling): two good ones (a plain 2x zoom,
    and a 3x zoom followed by a contrast stretch), one wrong answer, one failing code."""
    page = label_image(seed=21)
    img = root / "in" / "img"
    (img / "R.png").write_bytes(png(page))
    (img / "R_z2.png").write_bytes(png(crop_zoom(page, BOX, 2)))
    z3 = crop_zoom(page, BOX, 3)
    (img / "R_z3.png").write_bytes(png(z3))
    grey = z3.convert("L")
    lo, hi = grey.getextrema()
    stretched = grey.point(lambda v: int((v - lo) * 255 / max(hi - lo, 1)))
    (img / "R_z3s.png").write_bytes(png(stretched))
    zoom3 = "crop = image.crop((440, 20, 600, 100)).resize((480, 240))\ncrop.save('zoom.png')\nprint(crop.size)\n"
    stretch = ("g = crop.convert('L')\nlo, hi = g.getextrema()\n"
               "s = g.point(lambda v: int((v - lo) * 255 / max(hi - lo, 1)))\ns.save('stretched.png')\nprint(lo, hi)\n")

    def rec(turns, answer):
        return {"question": ROLLOUT_Q, "answer": "42", "images": ["img/R.png"], "discipline": "physics",
                "turns": turns, "final_answer": answer}

    zoom_turn = {"reasoning": "The label is tiny, so I crop the box and enlarge it 2x.", "code": ZOOM2,
                 "observation": {"text": "(320, 160)\n", "images": ["img/R_z2.png"]}}
    good_a = rec([zoom_turn, {"reasoning": "The enlarged label clearly reads 42, so the current is 42 A.", "code": None}], "42")
    good_b = rec([
        {"reasoning": "The ammeter label is far too small at this scale; I crop the box and enlarge it 3x with "
                      "Lanczos resampling to read the digits.", "code": zoom3,
         "observation": {"text": "(480, 240)\n", "images": ["img/R_z3.png"]}},
        {"reasoning": "The digits are still faint against the background, so I stretch the contrast of the crop "
                      "to its full range before reading it.", "code": stretch,
         "observation": {"text": f"{lo} {hi}\n", "images": ["img/R_z3s.png"]}},
        {"reasoning": "After the stretch the label in the box reads 42 without ambiguity: the ammeter shows "
                      "a current of 42 A.", "code": None}], "42")
    wrong = rec([zoom_turn, {"reasoning": "The enlarged label reads 47, so the current is 47 A.", "code": None}], "47")
    failing = rec([
        {"reasoning": "I crop the box and enlarge it.", "code": ZOOM2.replace(".resize(", ".resise("),
         "observation": {"text": "AttributeError: 'Image' object has no attribute 'resise'\n", "images": []}},
        {"reasoning": "The label reads 42, so the current is 42 A.", "code": None}], "42")
    return [good_a, wrong, good_b, failing]


@pytest.mark.timeout(900)
def test_ray_run_best_of_n_duplicates_and_contamination(ray_local, corpus, tmp_path):
    """One real run: the dedup corpus plus four rollouts of one question (c.jsonl)."""
    (corpus / "in" / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rollouts(corpus)) + "\n")
    out = tmp_path / "out"
    manifest = run_pipeline([corpus / "in"], out, RunConfig(), quiet=True, benchmark=corpus / "bench" / "benchmark.jsonl")
    assert manifest["conservation"]["ok"] and manifest["input_records"] == 14
    assert manifest["dedup"] == {"duplicates": 1, "contaminated": 2, "best_of_n_groups": 2, "best_of_n_members": 7,
                                 "best_of_n_rejected": 5, "best_of_n_redirected": 0}
    scores = ", ".join(S.SCORE_COLUMNS)
    con = duckdb.connect()
    cols = [S.SOURCE, S.SAMPLE_ID, S.ROUTE, S.ROUTE_REASONS, S.DUPLICATE_OF, S.REPLAY_STATUS, f"{S.IMAGES}[1].{S.IMG_WIDTH}",
            *S.SCORE_COLUMNS]
    rows = con.execute(
        f"SELECT {S.SOURCE}, {S.SAMPLE_ID}, {S.ROUTE}, {S.ROUTE_REASONS}, {S.DUPLICATE_OF}, {S.REPLAY_STATUS}, "
        f"{S.IMAGES}[1].{S.IMG_WIDTH}, {scores} FROM read_parquet('{out}/shards/**/*.parquet', hive_partitioning = true)"
    ).fetchall()
    assert len(rows) == 14
    got = {(r[0][S.SRC_FILE].rsplit("/", 1)[1], r[0][S.SRC_INDEX]): dict(zip(cols[1:], r[1:], strict=True)) for r in rows}
    reasons = {k: r[S.ROUTE_REASONS] for k, r in got.items()}
    first = got[("a.jsonl", 0)][S.SAMPLE_ID]
    # exact duplicate; A re-encoded and at 1/3 with the same question: the original (larger) kept
    assert got[("a.jsonl", 2)][S.ROUTE] == "rejected" and reasons[("a.jsonl", 2)] == [f"duplicate_of:{first}"]
    # known before replay: neither replayed nor judged (its original was)
    assert got[("a.jsonl", 2)][S.REPLAY_STATUS] == "not_run" and got[("a.jsonl", 0)][S.REPLAY_STATUS] != "not_run"
    assert all(got[("a.jsonl", 2)][c] is None for c in S.SCORE_COLUMNS)
    assert any(got[("a.jsonl", 0)][c] is not None for c in S.SCORE_COLUMNS)
    for k in (("b.jsonl", 0), ("b.jsonl", 1)):
        assert got[k][S.ROUTE] == "rejected" and reasons[k][0] == f"duplicate_of:{first}", got[k]
    # same image, another question; plots differing by a small label: all kept
    for k in (("a.jsonl", 0), ("a.jsonl", 1), ("a.jsonl", 3), ("b.jsonl", 4), ("b.jsonl", 5)):
        assert not any(r.startswith(("duplicate_of", "contaminated")) for r in reasons[k]), (k, reasons[k])
    assert "contaminated:MathVista" in reasons[("b.jsonl", 2)] and got[("b.jsonl", 2)][S.ROUTE] == "rejected"
    assert "contaminated:ChartQA" in reasons[("b.jsonl", 3)] and got[("b.jsonl", 3)][S.ROUTE] == "rejected"

    # four rollouts: the best kept, the three others duplicate_of it, all with their scores
    four = {i: got[("c.jsonl", i)] for i in range(4)}
    for i, r in four.items():
        print(i, r[S.ROUTE], r[S.ROUTE_REASONS], {c: r[c] for c in S.SCORE_COLUMNS})
        assert any(r[c] is not None for c in S.SCORE_COLUMNS)
    kept = [i for i, r in four.items() if r[S.DUPLICATE_OF] is None]
    assert len(kept) == 1 and kept[0] in (0, 2), four  # a good one, never the wrong answer or failing code
    best = four[kept[0]][S.SAMPLE_ID]
    assert four[kept[0]][S.ROUTE] != "rejected"
    for i in set(four) - set(kept):
        assert four[i][S.ROUTE] == "rejected" and four[i][S.ROUTE_REASONS][0] == f"duplicate_of:{best}", four[i]
        assert four[i][S.DUPLICATE_OF] == best
    assert "wrong_answer" in four[1][S.ROUTE_REASONS]
    assert any(r.startswith(("code_failed", "observation_mismatch")) for r in four[3][S.ROUTE_REASONS])
    # the two good ones differ in quality, and the kept one is the better by the documented order:
    # among the rollouts routing did not reject for their own reasons, the highest quality
    own = {i: [x for x in r[S.ROUTE_REASONS] if not x.startswith("duplicate_of:")] for i, r in four.items()}
    routable = [i for i in four if not own[i] or i in kept and four[i][S.ROUTE] in ("twi", "text")]
    assert sorted(routable) == [0, 2], own
    assert quality(four[0]) != quality(four[2])
    assert kept == [max(routable, key=lambda i: quality(four[i]))]
    assert ROUTE_TIER[four[kept[0]][S.ROUTE]] < ROUTE_TIER["rejected"]


def test_pre_pass_in_the_driver_and_in_ray_data_agree(ray_local, corpus, tmp_path):
    """A small input's pre-pass reads its records in the driver (while Ray starts), a large one's
    in Ray Data tasks: the same exact duplicates, the same records OUT holds, window by window."""
    out = tmp_path / "out"
    first = run_pipeline([corpus / "in" / "a.jsonl"], out, RunConfig(), quiet=True)  # OUT holds a.jsonl
    assert first["dedup"]["duplicates"] == 1 and first["timings"]["dedup_s"] >= 0
    tasks = plan_read_tasks([corpus / "in" / f for f in ("a.jsonl", "b.jsonl")], 2)
    windows = [tasks[:2], tasks[2:]]
    got = {mode: dedup_verdicts(windows, RunConfig(), None, tmp_path / mode, out / SHARDS_DIR, in_driver=mode == "driver")
           for mode in ("driver", "ray")}
    assert got["driver"] == got["ray"]
    verdicts, counts, superseded = got["driver"]
    assert counts == {"duplicates": 1, "already_curated": 4, "superseded": 0} and superseded == set()
    assert sorted(short(verdicts)) == [("a.jsonl", i) for i in range(4)]  # a.jsonl: curated already
    assert len(list((tmp_path / "driver" / "prekeys").glob("*.parquet"))) == len(windows)
