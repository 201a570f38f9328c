"""Every public trajectory format: a fixture in that exact shape parses into the expected canonical
sample (field by field), and one real Ray run over a folder holding all of them replays and
routes every record."""

from __future__ import annotations

import base64
import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import IngestConfig, RunConfig
from pipeline.formats import FORMAT_NAMES
from pipeline.formats.base import RecordContext, resolve_image
from pipeline.run import run_pipeline
from pipeline.stages.ingest import discover_inputs, plan_read_tasks, read_task
from schemas import sample as S
from tests.format_fixtures import Expected, label_image, where, write_format_fixtures
from tests.images import png

CFG = IngestConfig()


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats") / "corpus"
    return root, write_format_fixtures(root)


@pytest.fixture(scope="module")
def parsed(fixtures):
    root, _ = fixtures
    tasks = plan_read_tasks(discover_inputs([root]), records_per_task=2)
    rows = [r for t in tasks for r in read_task(t, CFG)]
    return {(where(root, r[S.SOURCE][S.SRC_FILE]), r[S.SOURCE][S.SRC_INDEX]): r for r in rows}


def test_fixtures_cover_every_format(fixtures):
    _, expected = fixtures
    from tests.test_real_formats import REAL_FORMAT_FIXTURES  # their fixtures and replay tests live there

    assert {e.format for e in expected.values()} | REAL_FORMAT_FIXTURES == set(FORMAT_NAMES)


@pytest.mark.parametrize(
    "rid",
    ["native-1", "thyme-sft-1", "thyme-rl-1", "thyme-rl-2", "sharegpt-1", "pyvision-1", "pyvision-rl-1",
     "openai-1", "deepeyes-1", "mini-o3-1"],
)
def test_record_parses_into_its_canonical_sample(fixtures, parsed, rid):
    _, expected = fixtures
    e: Expected = expected[rid]
    row = parsed[(e.file, e.index)]
    assert row[S.INPUT_ERROR] is None, row[S.RAW]
    assert row[S.SOURCE][S.SRC_FORMAT] == e.format
    assert row[S.QUESTION] == e.question
    assert row[S.GROUND_TRUTH] == e.ground_truth
    assert row[S.DISCIPLINE] == e.discipline
    assert [(i[S.IMG_SHA256], i[S.IMG_WIDTH], i[S.IMG_HEIGHT], i[S.IMG_PATH]) for i in row[S.IMAGES]] == e.images
    assert len(row[S.TURNS]) == len(e.turns)
    for got, want in zip(row[S.TURNS], e.turns, strict=True):
        assert got[S.TURN_REASONING] == want.reasoning
        if want.code_contains:
            assert all(fragment in got[S.TURN_CODE] for fragment in want.code_contains), got[S.TURN_CODE]
            compile(got[S.TURN_CODE], "<generated>", "exec")
        else:
            assert got[S.TURN_CODE] == want.code
        assert got[S.TURN_OBS_TEXT] == want.obs_text
        assert [i[S.IMG_SHA256] for i in got[S.TURN_OBS_IMAGES]] == want.obs_images
    assert row[S.FINAL_ANSWER] == e.final_answer
    S.to_table([row])


def test_forced_format_applies_to_every_record(fixtures):
    root, _ = fixtures
    tasks = plan_read_tasks([root / "sharegpt.json", root / "native.jsonl"], 4, format="sharegpt")
    rows = [r for t in tasks for r in read_task(t, CFG)]
    assert [r[S.SOURCE][S.SRC_FORMAT] for r in rows] == ["sharegpt", "sharegpt"]
    assert rows[0][S.INPUT_ERROR] is None
    assert rows[1][S.INPUT_ERROR] == "missing_field:messages"  # a native record is no chat


def test_unknown_format_option_lists_the_choices(tmp_path):
    (tmp_path / "x.jsonl").write_text("{}\n")
    result = CliRunner().invoke(app, ["run", str(tmp_path / "x.jsonl"), "--format", "nope", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "unknown format 'nope'" in result.output and "thyme_sft" in result.output


def test_images_from_every_kind_of_reference(tmp_path):
    data = png(label_image(seed=3))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(data)
    ctx = RecordContext(str(tmp_path / "r.jsonl"), 0, CFG, tmp_path, "t")
    b64 = base64.b64encode(data).decode()
    refs = {
        "relative path": "sub/a.png",
        "absolute path": str(tmp_path / "sub" / "a.png"),
        "file URL": f"file://{tmp_path / 'sub' / 'a.png'}",
        "base64": b64,
        "data URL": "data:image/png;base64," + b64,
        "bytes": data,
        "HF struct": {"bytes": data, "path": "orig/a.png"},
        "HF struct, path only": {"bytes": None, "path": "sub/a.png"},
        "OpenAI part": {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64}},
    }
    for label, ref in refs.items():
        img = resolve_image(ref, ctx, "input_0")
        assert img[S.IMG_BYTES] == data, label
        assert img[S.IMG_NAME].endswith(".png"), label
    assert resolve_image("sub/a.png", ctx, "x")[S.IMG_PATH] == "sub/a.png"
    assert resolve_image({"bytes": data, "path": "orig/a.png"}, ctx, "x")[S.IMG_PATH] == "orig/a.png"


def test_parquet_binary_and_base64_image_columns(tmp_path):
    """Thyme on the hub keeps images as base64 strings; Parquet exports often as raw bytes."""
    page = png(label_image(seed=4))
    zoom = png(label_image(seed=4).crop((440, 20, 600, 100)))
    response = ("<think>Crop it.<code>\n```python\nprint(1)\n```\n</code><sandbox_output>1\n<image></sandbox_output>"
                "Done, it reads 1.</think><answer>1</answer>")
    question = "<image>\nWhat is the value?"
    b64 = [base64.b64encode(page).decode(), base64.b64encode(zoom).decode()]
    pq.write_table(pa.table({"image": [b64, b64], "question": [question] * 2, "response": [response] * 2}),
                   tmp_path / "thyme_b64.parquet", row_group_size=1)
    pq.write_table(pa.table({"image": [[page, zoom]], "question": [question], "response": [response]}),
                   tmp_path / "thyme_bytes.parquet")
    tasks = plan_read_tasks([tmp_path / "thyme_b64.parquet", tmp_path / "thyme_bytes.parquet"], 4)
    assert [t.count for t in tasks] == [1, 1, 1]  # a task never straddles a row group
    rows = [r for t in tasks for r in read_task(t, CFG)]
    assert [r[S.INPUT_ERROR] for r in rows] == [None, None, None]
    assert len({r[S.SAMPLE_ID] for r in rows}) == 1  # same content, same id
    assert rows[2][S.TURNS][0][S.TURN_OBS_IMAGES][0][S.IMG_BYTES] == zoom
    assert [r[S.SOURCE][S.SRC_FORMAT] for r in rows] == ["thyme_sft"] * 3


@pytest.mark.timeout(900)
def test_all_formats_replay_and_route_in_one_ray_run(ray_local, fixtures, tmp_path):
    root, expected = fixtures
    out = tmp_path / "out"
    manifest = run_pipeline([root], out, RunConfig(), quiet=True)
    assert manifest["conservation"]["ok"]
    assert manifest["input_records"] == len(expected)
    rows = duckdb.connect().execute(
        f"SELECT {S.SOURCE}, {S.ROUTE}, {S.ROUTE_REASONS}, {S.REPLAY_STATUS}, {S.REPLAY} "
        f"FROM read_parquet('{out}/shards/**/*.parquet', hive_partitioning = true)"
    ).fetchall()
    got = {(where(root, src[S.SRC_FILE]), src[S.SRC_INDEX]): (src, route, reasons, status, cells)
           for src, route, reasons, status, cells in rows}
    assert len(got) == len(expected)
    for rid, e in expected.items():
        src, route, reasons, status, cells = got[(e.file, e.index)]
        assert src[S.SRC_FORMAT] == e.format, rid
        assert route in S.ROUTES and (route != "rejected" or reasons), rid
        assert set(e.route_reasons_include) <= set(reasons), (rid, reasons)
        n_code = sum(1 for t in e.turns if t.code or t.code_contains)
        assert len(cells) == n_code, rid
        # every cell replays, Thyme's absolute input path and PyVision's image_clue_K included
        assert [c[S.CELL_STATUS] for c in cells] == ["ok"] * n_code, (rid, [c[S.CELL_ERROR] for c in cells])
        assert not any(r.startswith(("invalid_input", "duplicate_of")) for r in reasons), (rid, reasons)
    print("routes:", json.dumps({rid: got[(e.file, e.index)][1:3] for rid, e in expected.items()}))


def test_readme_examples_are_detected_as_their_format():
    import re
    from pathlib import Path

    from pipeline.formats import detect_adapter

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Input formats", 1)[1].split("\n- ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|[^|]*\|[^|]*\| `(.*)` \|$", section, re.M)
    assert {name for name, _ in rows} == set(FORMAT_NAMES)
    for name, example in rows:
        assert detect_adapter(json.loads(example)).name == name


def test_hf_dataset_dict_folder_reads_every_split(tmp_path):
    import datasets

    page = png(label_image(seed=5))
    record = {"question": "<image>\nWhat is the value?", "image": [{"bytes": page, "path": "p.png"}],
              "response": "<think>It reads 42.</think><answer>42</answer>"}
    features = datasets.Features({"question": datasets.Value("string"), "response": datasets.Value("string"),
                                  "image": datasets.Sequence(datasets.Image())})
    dd = datasets.DatasetDict({split: datasets.Dataset.from_list([record] * n, features=features)
                               for split, n in (("train", 3), ("test", 2))})
    dd.save_to_disk(str(tmp_path / "hf"))
    files = discover_inputs([tmp_path])
    assert {f.parent.name for f in files} == {"train", "test"} and all(f.suffix == ".arrow" for f in files)
    rows = [r for t in plan_read_tasks(files, 2) for r in read_task(t, CFG)]
    assert len(rows) == 5 and all(r[S.INPUT_ERROR] is None for r in rows)
    assert {r[S.SOURCE][S.SRC_DATASET] for r in rows} == {"train", "test"}
    assert rows[0][S.IMAGES][0][S.IMG_BYTES] == page and rows[0][S.FINAL_ANSWER] == "42"
