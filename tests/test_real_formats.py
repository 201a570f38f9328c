"""Real published trajectories (../shared/real-data) are recognised, and the adapters written from
them (DeepEyes rollout logs, Pixel-Reasoner SFT, VisualSketchpad folders) parse small drawn
fixtures of the same shapes into replay-ready cells; binary inputs are one rejected row and are
never deserialised; plain multimodal chat is a sample without code."""

from __future__ import annotations

import base64
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.config import IngestConfig
from pipeline.sandbox import ProcessSandbox
from pipeline.stages.ingest import discover_inputs, plan_read_tasks, read_task
from pipeline.stages.replay import replay_row
from schemas import sample as S
from tests.images import png

REAL = Path(__file__).resolve().parents[2] / "shared" / "real-data"
CFG = IngestConfig()
# the formats whose fixtures live here (tests/test_formats.py covers the others)
REAL_FORMAT_FIXTURES = {"deepeyes_rollout", "pixel_reasoner", "visualsketchpad"}
UID = 60000 + (os.getpid() + 29) % 5000


def rows_of(paths: list[Path], cfg: IngestConfig = CFG) -> list[dict]:
    return [r for t in plan_read_tasks(discover_inputs(paths), 7) for r in read_task(t, cfg)]


def page(size=(900, 700), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(90, 160, (size[1], size[0], 3), dtype=np.uint8))
    ImageDraw.Draw(im).rectangle((400, 300, 440, 330), fill=(250, 250, 250))
    return im


# --- real data ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_rows():
    if not REAL.is_dir():
        pytest.skip(f"real data folder {REAL} is absent (../shared/real-data beside the checkout)")
    return rows_of([REAL])


def test_every_real_record_is_recognised(real_rows):
    assert len(real_rows) == 115 + 338 + 2
    assert not [r for r in real_rows if r[S.INPUT_ERROR] == "unknown_format"]
    by_format = {}
    for r in real_rows:
        by_format.setdefault(r[S.SOURCE][S.SRC_FORMAT], []).append(r)
    assert {k: len(v) for k, v in by_format.items()} == {"deepeyes_rollout": 115, "pixel_reasoner": 338, "visualsketchpad": 2}


def test_real_deepeyes_and_pixel_reasoner_name_the_missing_image(real_rows):
    lines = (REAL / "deepeyes/result_direct_attributes_tmp_acc.jsonl").read_text().splitlines()
    for r in real_rows:
        fmt = r[S.SOURCE][S.SRC_FORMAT]
        if fmt == "deepeyes_rollout":
            image = json.loads(lines[r[S.SOURCE][S.SRC_INDEX]])["image"]
            assert r[S.INPUT_ERROR] == "missing_image"
            assert f"looked for {REAL / 'deepeyes' / image}" in r[S.INPUT_DETAIL]
        elif fmt == "pixel_reasoner":
            assert r[S.INPUT_ERROR] == "missing_image"
            assert "/NEW_EDS/" in r[S.INPUT_DETAIL]


def test_real_visualsketchpad_folders(real_rows):
    rows = {Path(r[S.SOURCE][S.SRC_FILE]).parent.parent.name: r for r in real_rows
            if r[S.SOURCE][S.SRC_FORMAT] == "visualsketchpad"}
    geo, graph = rows["geometry"], rows["graph_max_flow"]
    assert geo[S.INPUT_ERROR] is None and graph[S.INPUT_ERROR] is None
    # geometry: one drawing cell, then the answer; input image.png under the prompt's path
    assert [bool(t[S.TURN_CODE]) for t in geo[S.TURNS]] == [True, False]
    assert geo[S.GROUND_TRUTH] == "90" and "90" in geo[S.FINAL_ANSWER]
    assert geo[S.QUESTION].startswith("In \\odot R") and "D. 90" in geo[S.QUESTION]
    assert len(geo[S.IMAGES]) == 1 and geo[S.IMAGES][0][S.IMG_PATH].startswith("/fsx-onellm/")
    assert geo[S.IMAGES][0][S.IMG_BYTES] == (REAL / "visualsketchpad/geometry/2079/image.png").read_bytes()
    # graph: a failing cell (recorded NetworkXUnbounded), the fix with its plot, then the answer
    assert [bool(t[S.TURN_CODE]) for t in graph[S.TURNS]] == [True, True, False]
    assert "NetworkXUnbounded" in graph[S.TURNS][0][S.TURN_OBS_TEXT]
    assert graph[S.TURNS][1][S.TURN_OBS_TEXT].startswith("Maximum flow value: 10")
    assert [len(t[S.TURN_OBS_IMAGES]) for t in graph[S.TURNS]] == [0, 1, 0]
    assert graph[S.GROUND_TRUTH] == "10" and graph[S.IMAGES] == []
    assert graph[S.QUESTION].startswith("You are given an adjacency matrix")
    assert "from PIL import Image" in graph[S.TURNS][0][S.TURN_CODE]  # the notebook's own import


def test_real_pixel_reasoner_remapped_to_stand_in_images(tmp_path):
    """With ingest.path_map pointing /NEW_EDS at drawn stand-ins, a real record parses."""
    if not REAL.is_dir():
        pytest.skip(f"real data folder {REAL} is absent")
    record = json.loads((REAL / "pixel_reasoner/train338cross.json").read_text())[0]
    for m in record["message_list"]:
        for part in m["content"]:
            if "image" in part:
                target = tmp_path / part["image"].lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(png(page(seed=len(str(target)))))
    cfg = IngestConfig(path_map={"/NEW_EDS": str(tmp_path / "NEW_EDS")})
    [row] = rows_of([REAL / "pixel_reasoner/train338cross.json"], cfg)[:1]
    assert row[S.INPUT_ERROR] is None, row[S.INPUT_DETAIL]
    assert [bool(t[S.TURN_CODE]) for t in row[S.TURNS]] == [True, False]
    assert "images[0]" in row[S.TURNS][0][S.TURN_CODE] and "crop_1.png" in row[S.TURNS][0][S.TURN_CODE]
    assert len(row[S.TURNS][0][S.TURN_OBS_IMAGES]) == 1
    assert row[S.GROUND_TRUTH] is None and row[S.FINAL_ANSWER].startswith('{"anomaly_present": true')


# --- drawn fixtures ------------------------------------------------------------------------------
def deepeyes_rollout(tmp_path: Path, with_image: bool = True) -> Path:
    if with_image:
        (tmp_path / "vstar").mkdir(exist_ok=True)
        page(seed=1).save(tmp_path / "vstar" / "sa_1.jpg")
    call = '<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [405, 305, 425, 320], "label": "sign"}}\n'
    empty = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,"}}
    record = {
        "image": "sa_1.jpg", "question": "What color is the sign?", "answer": "The sign is white.",
        "pred_ans": "white", "status": "success", "acc": 1.0,
        "pred_output": [
            {"role": "system", "content": "You are a helpful assistant. <tools>image_zoom_in_tool</tools>"},
            {"role": "user", "content": [empty, {"type": "text", "text": "Question: What color is the sign?\nOptions: A. white"}]},
            {"role": "assistant", "content": f"<think>\nThe sign is tiny.\n</think>  \n{call}"},
            {"role": "user", "content": [empty, {"type": "text", "text": "\nThink first, call the tool if needed."}]},
            {"role": "assistant", "content": "<think>It is white.</think> <answer>The sign is white.</answer>"},
        ],
    }
    direct = {**record, "pred_output": record["pred_output"][:2] + [
        {"role": "assistant", "content": "<think>I can see it.</think> <answer>white</answer>"}]}
    f = tmp_path / "result_direct_attributes.jsonl"
    f.write_text(json.dumps(record) + "\n" + json.dumps(direct) + "\n")
    return f


def test_deepeyes_rollout_fixture_parses(tmp_path):
    f = deepeyes_rollout(tmp_path)
    missing = rows_of([f])
    assert [r[S.INPUT_ERROR] for r in missing] == ["missing_image", "missing_image"]
    assert str(tmp_path / "sa_1.jpg") in missing[0][S.INPUT_DETAIL]
    rows = rows_of([f], IngestConfig(image_roots=[tmp_path / "vstar"]))
    zoom, direct = rows
    assert zoom[S.INPUT_ERROR] is None and zoom[S.SOURCE][S.SRC_FORMAT] == "deepeyes_rollout"
    assert zoom[S.GROUND_TRUTH] == "The sign is white." and zoom[S.FINAL_ANSWER] == "The sign is white."
    assert zoom[S.IMAGES][0][S.IMG_WIDTH] == 900 and zoom[S.IMAGES][0][S.IMG_PATH] == "sa_1.jpg"
    t0, t1 = zoom[S.TURNS]
    assert t0[S.TURN_REASONING].startswith("The sign is tiny.\n<tool_call>")
    assert "(405, 305, 425, 320)" in t0[S.TURN_CODE] and "zoom_1.png" in t0[S.TURN_CODE]
    assert t0[S.TURN_OBS_IMAGES] == [] and t0[S.TURN_OBS_TEXT] is None  # emptied: regenerated by replay
    assert t1[S.TURN_CODE] is None and set(zoom) == set(S.empty_row())  # pred_ans/status/acc are not kept
    # answered directly: a plain sample without code
    assert direct[S.INPUT_ERROR] is None and [t[S.TURN_CODE] for t in direct[S.TURNS]] == [None]
    assert direct[S.FINAL_ANSWER] == "white"


@pytest.mark.timeout(180)
def test_deepeyes_rollout_zoom_replays_ok_in_the_sandbox(tmp_path):
    f = deepeyes_rollout(tmp_path)
    row = rows_of([f], IngestConfig(image_roots=[tmp_path / "vstar"]))[0]
    box = ProcessSandbox(uid=UID, gid=UID)
    try:
        out = replay_row(row, box)
    finally:
        box.close()
    assert out[S.REPLAY_STATUS] == "ok", [c[S.CELL_ERROR] for c in out[S.REPLAY]]
    [cell] = out[S.REPLAY]
    [zoom] = cell[S.CELL_IMAGES]
    # a 20x15 box is below 4*28*28 px: beta = sqrt(3136 / 300) = 3.23, so each side becomes
    # ceil(side * beta / 28) * 28: 20 -> 84, 15 -> 56 (smart_resize, as the V* evaluation did)
    assert (zoom[S.IMG_WIDTH], zoom[S.IMG_HEIGHT]) == (84, 56)


def test_pixel_reasoner_fixture_parses(tmp_path):
    src, crop = tmp_path / "in.png", tmp_path / "crop.png"
    page(seed=2).save(src)
    page(seed=2).crop((300, 200, 500, 400)).save(crop)
    call = '<tool_call>{"name": "crop_image_normalized", "arguments": {"bbox_2d": [0.4, 0.4, 0.5, 0.5], "target_image": 1}}</tool_call>'
    call2 = '<tool_call>{"name": "crop_image_normalized", "arguments": {"bbox_2d": [0.2, 0.2, 0.8, 0.8], "target_image": 2}}</tool_call>'
    record = {"qid": "q", "id": str(src), "message_list": [
        {"role": "system", "content": [{"text": "tools"}]},
        {"role": "user", "content": [{"text": "Is the box white?"}, {"image": str(src)}]},
        {"role": "assistant", "content": [{"text": "Look closer.\n" + call}]},
        {"role": "user", "content": [{"text": "Here is the cropped image:"}, {"image": str(crop)}]},
        {"role": "assistant", "content": [{"text": "Closer still.\n" + call2}]},
        {"role": "user", "content": [{"text": "Here is the cropped image:"}, {"image": str(crop)}]},
        {"role": "assistant", "content": [{"text": "<think>Yes.</think><answer>yes</answer>"}]},
    ]}
    plain = {"qid": "p", "message_list": [record["message_list"][1],
                                         {"role": "assistant", "content": [{"text": "<answer>yes</answer>"}]}]}
    bad_tool = {"qid": "b", "message_list": [record["message_list"][1], {"role": "assistant", "content": [
        {"text": '<tool_call>{"name": "ocr", "arguments": {}}</tool_call>'}]}]}
    f = tmp_path / "train.json"
    f.write_text(json.dumps([record, plain, bad_tool]))
    row, plain_row, bad = rows_of([f])
    assert row[S.INPUT_ERROR] is None and row[S.SOURCE][S.SRC_FORMAT] == "pixel_reasoner"
    assert row[S.QUESTION] == "Is the box white?" and row[S.GROUND_TRUTH] is None and row[S.FINAL_ANSWER] == "yes"
    assert row[S.TURNS][0][S.TURN_REASONING] == "Look closer.\n" + call
    assert "src = images[0]" in row[S.TURNS][0][S.TURN_CODE]
    assert "src = Image.open('crop_1.png')" in row[S.TURNS][1][S.TURN_CODE] and "crop_2.png" in row[S.TURNS][1][S.TURN_CODE]
    assert [len(t[S.TURN_OBS_IMAGES]) for t in row[S.TURNS]] == [1, 1, 0]
    for t in row[S.TURNS][:2]:
        compile(t[S.TURN_CODE], "<cell>", "exec")
    assert plain_row[S.INPUT_ERROR] is None and [t[S.TURN_CODE] for t in plain_row[S.TURNS]] == [None]
    assert bad[S.INPUT_ERROR] == "unsupported_tool:ocr"


def sketchpad_folder(root: Path, calls_vision_tool: bool = False) -> Path:
    folder = root / "geometry" / "7"
    folder.mkdir(parents=True)
    page(seed=3).save(folder / "image.png")
    (folder / "ex.json").write_text(json.dumps({"problem_text": "Find x.", "choices": ["3", "4"], "answer": "B"}))
    prompt = ("Here are some tools. They are in tools.py and will be imported for you.\n```python\nimport numpy as np\n\n"
              "def midpoint(A, B):\n    return ((A[0] + B[0]) / 2, (A[1] + B[1]) / 2)\n```\n"
              "# EXAMPLE\nACTION 0:\n```python\nprint(1)\n```\n"
              "USER REQUEST #: Given the geometry diagram <img src='/other/machine/7.png'> find x.\n# RESULT #:\n")
    code = "m = midpoint((0, 0), (4, 4))\nprint(m)\nimage = Image.open('/other/machine/7.png')\nprint(image.size)\n"
    if calls_vision_tool:
        code = "out, boxes = segment_and_mark(image_1)\n"
    plot = base64.b64encode(png(page((64, 48), seed=4))).decode()
    output = [
        {"role": "user", "content": [{"type": "text", "text": prompt}]},
        {"role": "assistant", "content": [{"type": "text", "text": f"THOUGHT 0: Find the midpoint.\nACTION 0:\n```python\n{code}```"}]},
        {"role": "user", "content": [
            {"type": "text", "text": "OBSERVATION: Execution success. The output is as follows:\n"},
            {"type": "image_url", "image_url": {"url": plot}},
            {"type": "text", "text": "\n(2.0, 2.0)\n(900, 700)\n\nPlease generate the next THOUGHT and ACTION. If you can get the answer, ..."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "THOUGHT 1: x is 4.\nACTION 1: No action needed.\nANSWER: 4. TERMINATE"}]},
    ]
    (folder / "output.json").write_text(json.dumps(output))
    (folder / "usage_summary.json").write_text("{}")
    return folder


@pytest.mark.timeout(180)
def test_visualsketchpad_folder_is_one_record_and_replays(tmp_path):
    folder = sketchpad_folder(tmp_path / "outputs")
    for given in (tmp_path / "outputs", folder, folder / "output.json"):
        assert discover_inputs([given]) == [folder / "output.json"]
        assert len(rows_of([given])) == 1
    [row] = rows_of([folder])
    assert row[S.INPUT_ERROR] is None and row[S.SOURCE][S.SRC_FORMAT] == "visualsketchpad"
    assert row[S.QUESTION] == "Find x.\nChoices: A. 3  B. 4" and row[S.GROUND_TRUTH] == "4" and row[S.FINAL_ANSWER] == "4"
    assert row[S.IMAGES][0][S.IMG_PATH] == "/other/machine/7.png"
    cell = row[S.TURNS][0]
    assert "def midpoint" in cell[S.TURN_CODE] and "from PIL import Image" in cell[S.TURN_CODE]
    assert cell[S.TURN_OBS_TEXT] == "(2.0, 2.0)\n(900, 700)" and len(cell[S.TURN_OBS_IMAGES]) == 1
    box = ProcessSandbox(uid=UID, gid=UID)
    try:
        out = replay_row(row, box)
    finally:
        box.close()
    assert out[S.REPLAY_STATUS] == "ok", [c[S.CELL_ERROR] for c in out[S.REPLAY]]
    assert out[S.REPLAY][0][S.CELL_STDOUT].strip() == "(2.0, 2.0)\n(900, 700)"


def test_visualsketchpad_vision_tool_is_unsupported(tmp_path):
    folder = sketchpad_folder(tmp_path, calls_vision_tool=True)
    [row] = rows_of([folder])
    assert row[S.INPUT_ERROR] == "unsupported_tool:segment_and_mark"


# --- plain chat ----------------------------------------------------------------------------------
def test_plain_multimodal_chat_is_a_sample_without_code(tmp_path):
    (tmp_path / "q.png").write_bytes(png(page(seed=5)))
    records = [
        {"messages": [{"role": "user", "content": "<image>\nWhat color is the box?"},
                      {"role": "assistant", "content": "The box is white."}], "images": ["q.png"]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "q.png"}},
                                                   {"type": "text", "text": "What color?"}]},
                      {"role": "assistant", "content": "<answer>white</answer>"}]},
    ]
    f = tmp_path / "chat.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = rows_of([f])
    assert [r[S.INPUT_ERROR] for r in rows] == [None, None]
    assert [r[S.FINAL_ANSWER] for r in rows] == ["The box is white.", "white"]
    assert all(t[S.TURN_CODE] is None for r in rows for t in r[S.TURNS])
    assert replay_row(rows[0], sandbox=None)[S.REPLAY_STATUS] == "no_code"  # no sandbox is even needed


# --- binary inputs -------------------------------------------------------------------------------
class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["evil.pkl", "evil.jsonl", "evil.json"])
@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_one_rejected_row_and_never_runs(tmp_path, name, protocol):
    marker = tmp_path / "pwned"
    f = tmp_path / name
    f.write_bytes(pickle.dumps([Exploit(marker)] * 200, protocol=protocol))
    rows = rows_of([f])
    assert not marker.exists()
    assert [r[S.INPUT_ERROR] for r in rows] == ["binary_file:pickle"]
    assert "not opened" in rows[0][S.INPUT_DETAIL]


def test_other_binary_files_say_what_they_are(tmp_path):
    import gzip
    import zipfile

    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(b'{"a": 1}\n' * 50))
    with zipfile.ZipFile(tmp_path / "model.pt", "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": 1}))
    np.save(tmp_path / "arr.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "pic.jsonl").write_bytes(png(page((32, 32))))
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    got = {p.name: [r[S.INPUT_ERROR] for r in rows_of([p])] for p in sorted(tmp_path.iterdir())}
    assert got == {"a.jsonl.gz": ["binary_file:gzip"], "model.pt": ["binary_file:zip"], "arr.npy": ["binary_file:npy"],
                   "pic.jsonl": ["binary_file:png"], "blob.bin": ["binary_file:data"]}
