"""Images of data made on another machine: --image-root, ingest.path_map, Thyme's prompt path,
bare file names; a missing image names every path looked for; the trajectories replay."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ConfigError, IngestConfig, RunConfig, load_config, with_image_roots
from pipeline.sandbox import ProcessSandbox, ZygoteSandbox
from pipeline.stages.ingest import parse_payload
from pipeline.stages.replay import replay_row
from schemas import sample as S
from tests.images import png

UID = 60000 + (os.getpid() + 29) % 5000


def _page(h: int = 300, w: int = 400) -> bytes:
    arr = np.tile(np.arange(w, dtype=np.uint8), (h, 1))
    arr[100:120, 200:260] = 255
    return png(np.dstack([arr, arr // 2, 255 - arr]))


def _parse(record: dict, file: Path, cfg: IngestConfig) -> dict:
    return parse_payload(json.dumps(record).encode(), str(file), 0, cfg)


def _sharegpt(image_ref: str, code: str = "print(1)") -> dict:
    return {
        "messages": [
            {"role": "user", "content": "<image>\nWhat is in the bright box?"},
            {"role": "assistant", "content": f"<code>\n```python\n{code}\n```\n</code>"},
            {"role": "user", "content": "Code execution result:\nstdout:\n```\n\n```\nstderr:\n```\n\n```\nImages:\n"},
            {"role": "assistant", "content": "<answer>a bar</answer>"},
        ],
        "images": [image_ref],
    }


def test_missing_image_names_every_path_looked_for(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    cfg = with_image_roots(RunConfig(), [root]).ingest
    row = _parse(_sharegpt("images/stars.png"), data / "sft.jsonl", cfg)
    assert row[S.INPUT_ERROR] == "missing_image"
    detail = row[S.INPUT_DETAIL]
    for looked in (data / "images/stars.png", root / "images/stars.png", root / "stars.png"):
        assert str(looked) in detail, detail
    assert "--image-root" in detail
    absolute = _parse(_sharegpt("/NEW_EDS/u/000.png"), data / "sft.jsonl", cfg)
    assert absolute[S.INPUT_ERROR] == "missing_image"
    assert "/NEW_EDS/u/000.png" in absolute[S.INPUT_DETAIL] and "path_map" in absolute[S.INPUT_DETAIL]
    # an absolute path is never looked up by bare name (real corpora reuse names such as 000.png)
    (root / "000.png").write_bytes(_page())
    assert _parse(_sharegpt("/NEW_EDS/u/000.png"), data / "sft.jsonl", cfg)[S.INPUT_ERROR] == "missing_image"


def test_image_root_finds_relative_paths_and_bare_names(tmp_path):
    data, root = tmp_path / "data", tmp_path / "vstar" / "direct_attributes"
    data.mkdir()
    root.mkdir(parents=True)
    (root / "stars.png").write_bytes(_page())
    no_root = _parse(_sharegpt("stars.png"), data / "x.jsonl", IngestConfig())
    assert no_root[S.INPUT_ERROR] == "missing_image"
    cfg = with_image_roots(RunConfig(), [root]).ingest
    for ref in ("stars.png", "images/stars.png"):
        row = _parse(_sharegpt(ref), data / "x.jsonl", cfg)
        assert row[S.INPUT_ERROR] is None, row[S.INPUT_DETAIL]
        assert row[S.IMAGES][0][S.IMG_PATH] == ref  # the path as the trajectory wrote it, for the sandbox
        assert (row[S.IMAGES][0][S.IMG_WIDTH], row[S.IMAGES][0][S.IMG_HEIGHT]) == (400, 300)


def test_path_map_rewrites_prefixes_longest_first(tmp_path):
    local = tmp_path / "mmad"
    (local / "screw").mkdir(parents=True)
    (local / "screw" / "000.png").write_bytes(_page())
    (tmp_path / "wrong").mkdir()
    config = tmp_path / "cfg.yaml"
    config.write_text(
        "ingest:\n  path_map:\n"
        f"    /NEW_EDS: {tmp_path / 'wrong'}\n"
        f"    /NEW_EDS/miaojw/projects/MMAD: {local}\n"
    )
    cfg = load_config(config).ingest
    row = _parse(_sharegpt("/NEW_EDS/miaojw/projects/MMAD/screw/000.png"), tmp_path / "x.jsonl", cfg)
    assert row[S.INPUT_ERROR] is None, row[S.INPUT_DETAIL]
    assert row[S.IMAGES][0][S.IMG_PATH] == "/NEW_EDS/miaojw/projects/MMAD/screw/000.png"


def test_bad_image_options_fail_up_front_with_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="not folders; pass existing folders"):
        with_image_roots(RunConfig(), [tmp_path / "nope"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest:\n  path_map:\n    '': /x\n")
    with pytest.raises(ConfigError, match="path_map"):
        load_config(bad)
    assert RunConfig().config_hash() != with_image_roots(RunConfig(), [tmp_path]).config_hash()


THYME_CODE = (
    "import cv2\n"
    "img = cv2.imread('/eval/17127.jpg')\n"
    "crop = cv2.resize(img[100:120, 200:260], None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)\n"
    "out = '/mnt/data/temp_processed_images/17127_crop.png'\n"
    "cv2.imwrite(out, crop)\n"
    "print(out)\n"
)


def _thyme_record(size: str = "400x300") -> dict:
    question = (
        "<image>\nWhat colour is the bright box?\n"
        '### User Image Path: "/eval/17127.jpg"\n'
        f'### User Image Size: "{size}"\n'
    )
    return {
        "image": ["images/17127.png", "images/17127_crop.png"],
        "question": question,
        "response": (
            "<think>The box is small; I crop it and enlarge it 4x.\n"
            f"<code>\n```python\n{THYME_CODE}```\n</code>\n"
            "<sandbox_output>/mnt/data/temp_processed_images/17127_crop.png\n<image></sandbox_output>\n"
            "The enlarged crop shows a bright bar.</think><answer>bright</answer>"
        ),
    }


@pytest.fixture(scope="module", params=[ProcessSandbox, ZygoteSandbox], ids=["process", "zygote"])
def sandbox(request):
    box = request.param(uid=UID, gid=UID)
    yield box
    box.close()


@pytest.mark.timeout(120)
def test_thyme_record_opening_its_prompt_path_replays_ok(tmp_path, sandbox):
    """The Thyme prompt names /eval/17127.jpg (a machine that is not this one); the record's
    image list holds a relative copy. The input is mapped to the prompt's path, so the cell runs."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "17127.png").write_bytes(_page())
    (images / "17127_crop.png").write_bytes(_page(80, 240))
    row = _parse(_thyme_record(), tmp_path / "thyme.jsonl", IngestConfig())
    assert row[S.INPUT_ERROR] is None, row[S.INPUT_DETAIL]
    assert row[S.IMAGES][0][S.IMG_PATH] == "/eval/17127.jpg"
    out = replay_row(row, sandbox)
    assert [c[S.CELL_STATUS] for c in out[S.REPLAY]] == ["ok"], [c[S.CELL_ERROR] for c in out[S.REPLAY]]
    cell = out[S.REPLAY][0]
    assert cell[S.CELL_STDOUT] == "/mnt/data/temp_processed_images/17127_crop.png\n"
    assert [(i[S.IMG_WIDTH], i[S.IMG_HEIGHT]) for i in cell[S.CELL_IMAGES]] == [(240, 80)]


def test_thyme_prompt_size_must_match_the_image(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "17127.png").write_bytes(_page())
    (images / "17127_crop.png").write_bytes(_page(80, 240))
    row = _parse(_thyme_record("1024x768"), tmp_path / "thyme.jsonl", IngestConfig())
    assert row[S.INPUT_ERROR] == "image_size_mismatch"
    assert "1024x768" in row[S.INPUT_DETAIL] and "400x300" in row[S.INPUT_DETAIL]


@pytest.mark.timeout(120)
def test_cell_opening_its_input_by_bare_file_name_replays_ok(tmp_path, sandbox):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "stars.png").write_bytes(_page())
    code = "from PIL import Image\nim = Image.open('stars.png')\nprint(im.size)"
    row = _parse(_sharegpt("images/stars.png", code), tmp_path / "sft.jsonl", IngestConfig())
    assert row[S.INPUT_ERROR] is None, row[S.INPUT_DETAIL]
    out = replay_row(row, sandbox)
    assert out[S.REPLAY_STATUS] == "ok", [c[S.CELL_ERROR] for c in out[S.REPLAY]]
    assert out[S.REPLAY][0][S.CELL_STDOUT] == "(400, 300)\n"
