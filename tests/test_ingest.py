import json

import numpy as np
import pytest
from PIL import Image

from pipeline.config import IngestConfig
from pipeline.stages.ingest import discover_inputs, plan_read_tasks, read_task
from schemas import sample as S
from tests.images import png

CFG = IngestConfig()


def good_record(img="images/a.png"):
    return {
        "dataset": "t",
        "discipline": "Physics",
        "question": "What is shown?",
        "answer": "3",
        "images": [img],
        "turns": [
            {"reasoning": "Zoom in.", "code": "print(3)", "observation": {"text": "3", "images": []}},
            {"reasoning": "It shows 3.", "code": None},
        ],
        "final_answer": "3",
    }


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png(np.full((40, 60, 3), 200, np.uint8)))
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    bomb = Image.new("1", (20000, 20000))  # ~50 MB of pixels on decode, a few KB on disk
    bomb.save(tmp_path / "images" / "bomb.png")
    lines = [
        json.dumps(good_record()).encode(),
        b"{not json",
        b"\xff\xfe not utf8",
        json.dumps([1, 2]).encode(),
        json.dumps(good_record("images/missing.png")).encode(),
        json.dumps(good_record("images/corrupt.png")).encode(),
        json.dumps(good_record("images/bomb.png")).encode(),
        json.dumps({**good_record(), "turns": []}).encode(),
        json.dumps({**good_record(), "question": {"x": 1}}).encode(),
        json.dumps({k: v for k, v in good_record().items() if k != "question"}).encode(),
        b"",  # blank lines are not records
        json.dumps(good_record()).encode(),
    ]
    f = tmp_path / "c.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "labels.jsonl").write_text("{}\n")
    return f


EXPECTED_ERRORS = [
    None,
    "malformed_json",
    "non_utf8",
    "not_an_object",
    "missing_image",
    "corrupt_image",
    "decompression_bomb",
    "empty_trajectory",
    "wrong_type",
    "missing_field:question",
    None,
]


def test_every_record_becomes_exactly_one_row_with_its_error(corpus):
    tasks = plan_read_tasks([corpus], records_per_task=3)
    assert sum(t.count for t in tasks) == 11
    rows = [r for t in tasks for r in read_task(t, CFG)]
    assert [r[S.INPUT_ERROR] for r in rows] == EXPECTED_ERRORS
    assert [r[S.SOURCE][S.SRC_INDEX] for r in rows] == list(range(11))
    for r in rows:
        if r[S.INPUT_ERROR]:
            assert r[S.SAMPLE_ID].startswith("invalid-")
            assert r[S.DISCIPLINE] == "unknown"
    assert rows[1][S.RAW] == "{not json"
    S.to_table(rows)  # every row fits the schema


def test_valid_record_is_canonical(corpus):
    rows = read_task(plan_read_tasks([corpus], 100)[0], CFG)
    r = rows[0]
    assert r[S.DISCIPLINE] == "physics"
    assert r[S.IMAGES][0][S.IMG_WIDTH] == 60 and r[S.IMAGES][0][S.IMG_HEIGHT] == 40
    assert r[S.TURNS][0][S.TURN_CODE] == "print(3)" and r[S.TURNS][1][S.TURN_CODE] is None
    # same content -> same id, wherever it sits
    assert rows[0][S.SAMPLE_ID] == rows[-1][S.SAMPLE_ID]


def test_limit_and_directory_discovery_skip_labels(corpus):
    files = discover_inputs([corpus.parent])
    assert files == [corpus]
    assert sum(t.count for t in plan_read_tasks(files, 4, limit=5)) == 5


def test_missing_input_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_inputs([tmp_path / "nope.jsonl"])
