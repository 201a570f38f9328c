"""Real published records (../shared/real-data, or $TWI_REAL_DATA) through the real pipeline:
every record recognised, missing images named, and with stand-in images at the looked-up
paths the zooms replay."""

from __future__ import annotations

import json

import duckdb
import pytest

from pipeline.config import RunConfig
from pipeline.run import run_pipeline
from tests.stand_ins import deepeyes_stand_ins, pixel_reasoner_stand_ins, real_data_dir

REAL = real_data_dir()
pytestmark = [
    pytest.mark.skipif(
        not REAL.is_dir(),
        reason=f"real public records not found at {REAL} (set TWI_REAL_DATA to the shared real-data folder)",
    ),
    pytest.mark.timeout(600),
]
DEEPEYES = REAL / "deepeyes" / "result_direct_attributes_tmp_acc.jsonl"
PIXEL = REAL / "pixel_reasoner" / "train338cross.json"


def _rows(out, where: str = "true") -> list[dict]:
    rel = duckdb.sql(
        f"SELECT * FROM read_parquet('{out}/shards/**/*.parquet', hive_partitioning = true) WHERE {where} "
        "ORDER BY source.file, source.index"
    )
    return [dict(zip(rel.columns, r, strict=True)) for r in rel.fetchall()]


@pytest.fixture(scope="module")
def published(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "out"
    manifest = run_pipeline([REAL], out, RunConfig(), quiet=True)
    return manifest, _rows(out)


def test_every_real_record_is_recognised_and_counted(published):
    manifest, rows = published
    expected = sum(1 for line in DEEPEYES.open() if line.strip()) + len(json.loads(PIXEL.read_text()))
    expected += len(list(REAL.glob("visualsketchpad/*/*/output.json")))
    assert manifest["input_records"] == len(rows) == expected
    assert manifest["conservation"]["ok"]
    assert [r for r in rows if r["input_error"] == "unknown_format"] == []
    assert {r["source"]["format"] for r in rows} >= {"deepeyes_rollout", "pixel_reasoner", "visualsketchpad"}


def test_published_rollouts_without_images_name_the_path_looked_for(published):
    _, rows = published
    deepeyes = [r for r in rows if r["source"]["file"].endswith(DEEPEYES.name)]
    assert deepeyes and {r["input_error"] for r in deepeyes} == {"missing_image"}
    for r in deepeyes:
        image = json.loads(DEEPEYES.read_text().splitlines()[r["source"]["index"]])["image"]
        assert f"looked for {DEEPEYES.parent / image}" in r["input_detail"], r["input_detail"]
        assert r["route"] == "rejected" and r["route_reasons"] == ["invalid_input:missing_image"]
    pixel = [r for r in rows if r["source"]["file"].endswith(PIXEL.name)]
    assert pixel and {r["input_error"] for r in pixel} == {"missing_image"}
    assert all("/NEW_EDS/" in r["input_detail"] and "path_map" in r["input_detail"] for r in pixel)


def test_visualsketchpad_folders_replay(published):
    _, rows = published
    sketch = {r["source"]["file"].split("visualsketchpad/")[1]: r for r in rows if "visualsketchpad/" in r["source"]["file"]}
    assert len(sketch) == 2, sorted(sketch)
    for r in sketch.values():
        assert r["input_error"] is None and r["replay"], r["input_detail"]
    geometry = next(r for k, r in sketch.items() if k.startswith("geometry"))
    assert geometry["replay_status"] == "ok", [c["error"] for c in geometry["replay"]]
    assert geometry["replay"][0]["images"], "the auxiliary-line figure is captured"


def test_deepeyes_and_pixel_reasoner_zooms_replay_with_stand_in_images(ray_local, tmp_path):
    """The images are not published: drawn stand-ins at the paths the records name, found
    through --image-root (DeepEyes' bare file names) and ingest.path_map (Pixel-Reasoner's
    absolute paths of its author's machine). Every zoom replays ok."""
    data = tmp_path / "data"
    data.mkdir()
    lines = DEEPEYES.read_text().splitlines()[:6]
    (data / "deepeyes.jsonl").write_text("\n".join(lines) + "\n")
    (data / "pixel.json").write_text(json.dumps(json.loads(PIXEL.read_text())[:4]))
    root = deepeyes_stand_ins(data / "deepeyes.jsonl", tmp_path / "vstar")
    path_map = pixel_reasoner_stand_ins(data / "pixel.json", tmp_path / "eds")
    cfg = RunConfig()
    cfg = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"image_roots": [root], "path_map": path_map})})
    out = tmp_path / "out"
    manifest = run_pipeline([data], out, cfg, quiet=True)
    rows = _rows(out)
    assert manifest["input_records"] == len(rows) == 10 and manifest["conservation"]["ok"]
    for r in rows:
        assert r["input_error"] is None, r["input_detail"]
        assert r["replay"] and r["replay_status"] == "ok", [(c["status"], c["error"][-300:]) for c in r["replay"]]
        assert all(c["images"] for c in r["replay"]), "every zoom produced its crop"


def test_answers_judged_as_deepeyes_own_evaluation_judged_them(tmp_path):
    """The rollouts carry DeepEyes' own verdict (``acc``, from its V* evaluation); our
    scientific-accuracy judge reads the same answers against the question's options (sentences
    such as "The mailbox is black.", bare words such as "Purple") and must agree."""
    from judges.scientific_accuracy import ScientificAccuracyJudge
    from pipeline.config import IngestConfig
    from pipeline.stages.ingest import parse_payload

    judge = ScientificAccuracyJudge()
    lines = DEEPEYES.read_bytes().splitlines()
    cfg = IngestConfig(image_roots=[deepeyes_stand_ins(DEEPEYES, tmp_path / "vstar")])
    disagree = []
    for k, line in enumerate(lines):
        row = parse_payload(line, str(DEEPEYES), k, cfg)
        assert row["input_error"] is None, row["input_detail"]
        assert row["question"].startswith("Question:") and "\nA. " in row["question"], row["question"]
        ours = judge.judge(row).score
        theirs = json.loads(line)["acc"]
        if ours != theirs:
            disagree.append((row["final_answer"], row["ground_truth"], theirs))
    print(f"agreement with DeepEyes' own evaluation: {len(lines) - len(disagree)}/{len(lines)}")
    assert len(disagree) <= len(lines) // 50, disagree[:10]
