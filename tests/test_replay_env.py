"""Replay-environment gaps are not the trajectory's fault (issue 10, part 4), on the real sandbox:
a missing module, tool function or referenced file is ``replay_env:<kind>:<name>`` (not
``code_failed``), a genuine bug stays ``error``, the recovered-error policy does what the README
says, and one real run counts the gaps in the manifest and names them in its closing summary."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from judges.code_correctness import CodeCorrectnessJudge, recovered_failures
from pipeline.sandbox import SandboxLimits, ZygoteSandbox
from pipeline.stages.judge import judge_row
from pipeline.stages.replay import final_exception, replay_row
from routing.policy import RoutingPolicy
from routing.route import decide
from schemas import sample as S
from tests.images import png

pytestmark = pytest.mark.timeout(300)
UID = 60000 + (os.getpid() + 3700) % 5000  # apart from the other sandbox tests' uids
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "real-data"
MISSING_MODULE = "twi_curate_not_installed_pkg"  # made up: certainly not installed
GOOD = {"visual_gain": 0.9, "coherence": 0.9, "scientific_accuracy": 1.0, "alignment": 1.0,
        "educational_value": 0.8}


@pytest.fixture(scope="module")
def sandbox():
    box = ZygoteSandbox(SandboxLimits(cell_timeout_s=20.0, total_timeout_s=60.0), uid=UID, gid=UID)
    yield box
    box.close()


def make_row(cells: list[tuple[str, str | None]], question: str = "What is shown?", final: str | None = "37",
             image_path: str | None = None) -> dict:
    """A canonical row with one drawn input image and one turn per (code, recorded text) cell."""
    img = png(np.tile(np.arange(160, dtype=np.uint8), (90, 1)))
    row = S.empty_row()
    row.update({
        S.SAMPLE_ID: "t", S.QUESTION: question, S.FINAL_ANSWER: final, S.GROUND_TRUTH: final,
        S.IMAGES: [S.image_record("q.png", img, 160, 90, image_path)],
        S.TURNS: [{S.TURN_REASONING: f"step {i}", S.TURN_CODE: code, S.TURN_OBS_TEXT: obs, S.TURN_OBS_IMAGES: []}
                  for i, (code, obs) in enumerate(cells)],
    })
    return row


def judged(row: dict, recovered_errors: str = "accept") -> dict:
    judge_row(row, [CodeCorrectnessJudge(recovered_errors)])
    row.update({S.score_column(d): v for d, v in GOOD.items()})
    return row


def statuses(row: dict) -> list[str]:
    return [c[S.CELL_STATUS] for c in row[S.REPLAY]]


def test_missing_module_is_a_replay_env_gap_not_a_code_failure(sandbox):
    assert importlib.util.find_spec(MISSING_MODULE) is None
    row = replay_row(make_row([
        ("print('size', image.size)", "size (160, 90)"),
        (f"import {MISSING_MODULE}.graphs as g\nprint(g.solve())", "42"),
        ("print(g.solve() + 1)", "43"),  # fails only because the import above did: the same gap
    ]), sandbox)
    gap = f"module:{MISSING_MODULE}"
    assert statuses(row) == ["ok", "replay_env", "replay_env"], [c[S.CELL_ERROR] for c in row[S.REPLAY]]
    assert [c[S.CELL_ENV_GAP] for c in row[S.REPLAY]] == [None, gap, gap]
    assert row[S.REPLAY_STATUS] == "replay_env" and row[S.REPLAY_ENV] == [gap]
    row = judged(row)
    assert row[S.score_column("code_correctness")] is None
    why = row[S.explanation_column("code_correctness")]
    assert f"module {MISSING_MODULE} is not installed" in why, why
    assert decide(row, RoutingPolicy()).reasons == [f"replay_env:{gap}"]


def test_networkx_is_installed_in_the_replay_environment(sandbox):
    code = ("import networkx as nx\nG = nx.DiGraph()\n"
            "G.add_edge(0, 1, capacity=7); G.add_edge(1, 2, capacity=4); G.add_edge(0, 2, capacity=6)\n"
            "print('max flow', nx.maximum_flow_value(G, 0, 2))")
    row = replay_row(make_row([(code, "max flow 10")]), sandbox)
    assert statuses(row) == ["ok"] and row[S.REPLAY][0][S.CELL_STDOUT] == "max flow 10\n"
    assert row[S.REPLAY_ENV] == [] and row[S.REPLAY_STATUS] == "ok"


def test_tool_function_gap_versus_genuine_bugs(sandbox):
    tool = replay_row(make_row([
        ("crop = zoom_in_image(image, (10, 10, 60, 40))\nprint(crop.size)", "(100, 60)"),
    ]), sandbox)
    assert statuses(tool) == ["replay_env"] and tool[S.REPLAY_ENV] == ["tool:zoom_in_image"]
    assert decide(judged(tool), RoutingPolicy()).reasons == ["replay_env:tool:zoom_in_image"]

    bugs = {
        "print(1 / 0)": "ZeroDivisionError",
        "total = 3\nprint(totl + 1)": "NameError",  # a misspelt variable, never called: the code's fault
        "def area(w, h):\n    return w * h\nprint(area(2))": "TypeError",
    }
    for code, exc in bugs.items():
        row = replay_row(make_row([(code, None)]), sandbox)
        assert statuses(row) == ["error"] and row[S.REPLAY_ENV] == [], (code, row[S.REPLAY][0][S.CELL_ERROR])
        assert final_exception(row[S.REPLAY][0][S.CELL_ERROR])[0] == exc
        assert decide(judged(row), RoutingPolicy()).reasons == ["code_failed:error"]

    # a called name whose NameError the record itself shows: the original run failed the same way
    typo = replay_row(make_row([("pritn('x')", "NameError: name 'pritn' is not defined")]), sandbox)
    assert statuses(typo) == ["error"] and typo[S.REPLAY_ENV] == []


def test_referenced_file_gap_versus_a_missing_file_of_the_code(sandbox):
    question = '<image>\nWhat is the label?\n### User Image Path: "/eval/17127.jpg"'
    opened = replay_row(make_row([
        ("from PIL import Image\nim = Image.open('/eval/17127.jpg')\nprint(im.size)", "(160, 90)"),
    ], question=question), sandbox)
    assert statuses(opened) == ["replay_env"], opened[S.REPLAY][0][S.CELL_ERROR]
    assert opened[S.REPLAY_ENV] == ["file:/eval/17127.jpg"]

    imread = replay_row(make_row([  # cv2.imread returns None; the failure comes a line later
        ("import cv2\npath = '/data/run3/stars.png'\nimg = cv2.imread(path)\nprint(img.shape)", "(90, 160, 3)"),
    ], question="How many stars?", image_path="images/stars.png"), sandbox)
    assert "NoneType" in imread[S.REPLAY][0][S.CELL_ERROR]
    assert imread[S.REPLAY_ENV] == ["file:/data/run3/stars.png"], imread[S.REPLAY][0][S.CELL_ERROR]
    assert decide(judged(imread), RoutingPolicy()).reasons == ["replay_env:file:/data/run3/stars.png"]

    own = replay_row(make_row([  # a file the record never mentions: the code's own mistake
        ("print(open('notes_from_yesterday.txt').read())", "hello"),
    ], question=question), sandbox)
    assert statuses(own) == ["error"] and own[S.REPLAY_ENV] == []


def test_a_reproduced_recorded_import_error_is_the_trajectorys_own(sandbox):
    recorded = f"ModuleNotFoundError: No module named '{MISSING_MODULE}'"
    row = replay_row(make_row([(f"import {MISSING_MODULE}", recorded), ("print(2 + 2)", "4")]), sandbox)
    assert statuses(row) == ["error", "ok"] and row[S.REPLAY_ENV] == []


RECOVERING = [
    ("import networkx as nx\nG = nx.DiGraph()\nG.add_edge(0, 1); G.add_edge(1, 2); G.add_edge(0, 2)\n"
     "print('max flow', nx.maximum_flow_value(G, 0, 2))", None),  # no capacities: NetworkXUnbounded
    ("G = nx.DiGraph()\nG.add_edge(0, 1, capacity=7); G.add_edge(1, 2, capacity=4); G.add_edge(0, 2, capacity=6)\n"
     "print('max flow', nx.maximum_flow_value(G, 0, 2))", None),
]


def test_recovered_error_policy_accept_penalize_reject(sandbox):
    base = replay_row(make_row(RECOVERING, final="10"), sandbox)
    assert statuses(base) == ["error", "ok"] and "NetworkXUnbounded" in base[S.REPLAY][0][S.CELL_ERROR]
    assert base[S.REPLAY][1][S.CELL_STDOUT] == "max flow 10\n"
    assert recovered_failures(base[S.REPLAY], "10") == [(0, 1)]
    assert recovered_failures(base[S.REPLAY], None) == []  # no final answer: not a recovery

    accept = judged(dict(base), "accept")
    assert accept[S.score_column("code_correctness")] == 1.0
    assert "cell 0 fixed by cell 1" in accept[S.explanation_column("code_correctness")]
    assert decide(accept, RoutingPolicy()).route == "twi"  # the default policy is accept

    penalize = judged(dict(base), "penalize")
    assert penalize[S.score_column("code_correctness")] == 0.5
    assert decide(penalize, RoutingPolicy(recovered_errors="penalize")).reasons == ["code_failed:error"]

    reject = judged(dict(base), "reject")
    assert decide(reject, RoutingPolicy(recovered_errors="reject")).reasons == ["recovered_error"]

    unrecovered = judged(replay_row(make_row(RECOVERING[:1] + [("print('giving up')", None)] + RECOVERING[:1],
                                             final="10"), sandbox))
    assert statuses(unrecovered) == ["error", "ok", "error"]  # the last failure is never fixed
    assert decide(unrecovered, RoutingPolicy()).reasons == ["code_failed:error"]


def _sketchpad_cells(task: Path) -> tuple[list[tuple[str, str]], str]:
    """(code, recorded observation) per ACTION of a VisualSketchpad output.json, and the answer."""
    msgs = json.loads((task / "output.json").read_text())
    texts = [(m["role"], "\n".join(p.get("text", "") for p in m["content"] if p.get("type") == "text"))
             for m in msgs]
    cells, answer = [], ""
    for k, (role, text) in enumerate(texts):
        if role != "assistant":  # the first user message holds few-shot examples with ACTIONs
            continue
        for code in re.findall(r"ACTION \d+:\s*```python\n(.*?)```", text, re.S):
            obs = next((t for r, t in texts[k + 1:] if r == "user" and t.startswith("OBSERVATION")), "")
            cells.append((code, obs))
        m = re.search(r"ANSWER:\s*(.*?)\s*TERMINATE", text, re.S)
        answer = m.group(1) if m else answer
    return cells, answer


def test_visualsketchpad_graph_example_recovers(sandbox):
    task = REAL_DATA / "visualsketchpad" / "graph_max_flow" / "5"
    if not (task / "output.json").is_file():
        pytest.skip(f"real data not found at {task} (see ../shared/real-data/README.md)")
    cells, answer = _sketchpad_cells(task)
    assert len(cells) == 2 and "10" in answer
    # the notebook's prelude (Image, display) is what VisualSketchpad ran before the first action
    prelude = "from PIL import Image\n"
    row = replay_row(make_row([(prelude + code, obs) for code, obs in cells], final=answer), sandbox)
    assert statuses(row) == ["error", "ok"], [c[S.CELL_ERROR][-300:] for c in row[S.REPLAY]]
    assert "NetworkXUnbounded" in row[S.REPLAY][0][S.CELL_ERROR]
    assert "Maximum flow value: 10" in row[S.REPLAY][1][S.CELL_STDOUT]
    assert row[S.REPLAY_ENV] == [] and recovered_failures(row[S.REPLAY], answer) == [(0, 1)]


def test_unsupported_tool_input_error_routes_with_the_tool_name():
    row = S.empty_row()
    row[S.INPUT_ERROR] = "unsupported_tool:segment_and_mark"
    assert decide(row, RoutingPolicy()).reasons == ["unsupported_tool:segment_and_mark"]
    row[S.INPUT_ERROR], row[S.INPUT_DETAIL] = "unsupported_tool", "detect_objects"
    assert decide(row, RoutingPolicy()).reasons == ["unsupported_tool:detect_objects"]
    row[S.INPUT_ERROR], row[S.INPUT_DETAIL] = "malformed_json", "Expecting value"
    assert decide(row, RoutingPolicy()).reasons == ["invalid_input:malformed_json"]


@pytest.mark.timeout(600)
def test_run_counts_gaps_in_the_manifest_and_names_them_at_the_end(ray_local, tmp_path):
    """One real run (CLI, Ray, sandbox, Parquet): gaps are counted from the shards and the closing
    summary says what to install or pass."""
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.manifest import read_manifest

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "q.png").write_bytes(png(np.tile(np.arange(160, dtype=np.uint8), (90, 1))))

    def record(code: str, obs: str, question: str = "What is the label in the image?") -> dict:
        return {"question": question, "answer": "37", "images": ["img/q.png"], "final_answer": "37",
                "turns": [{"reasoning": "Measure it.", "code": code, "observation": {"text": obs, "images": []}}]}

    records = [
        record(f"import {MISSING_MODULE}\nprint({MISSING_MODULE}.measure(image))", "37"),
        record(f"from {MISSING_MODULE}.tools import measure\nprint(measure(image))", "37"),
        record("print(zoom_in_image(image, (10, 10, 60, 40)).size)", "(100, 60)"),
        record("from PIL import Image\nprint(Image.open('/eval/17127.jpg').size)", "(160, 90)",
               question="The scan is /eval/17127.jpg. What is the label?"),
        record("print(37 / 0)", "37"),
    ]
    corpus = tmp_path / "gaps.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(corpus), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    env = read_manifest(out)["replay_env"]
    assert env["gaps"] == {f"module:{MISSING_MODULE}": 2, "tool:zoom_in_image": 1, "file:/eval/17127.jpg": 1}
    assert env["samples"] == 4 and env["by_kind"] == {"module": 2, "tool": 1, "file": 1}
    reasons = read_manifest(out)["reasons"]["rejected"]
    assert reasons[f"replay_env:module:{MISSING_MODULE}"] == 2 and reasons["code_failed:error"] == 1
    assert not any(r.startswith("code_failed") for r in reasons if r != "code_failed:error")
    said = " ".join(result.output.split())  # rich wraps long lines at the terminal width
    assert "REPLAY ENVIRONMENT GAPS: 4 sample(s)" in said
    assert f"2 samples need module {MISSING_MODULE}: install it in the replay environment" in said
    assert f"pip install {MISSING_MODULE}" in said
    assert "1 sample needs tool function zoom_in_image" in said
    assert "1 sample references a file that was not found (/eval/17127.jpg): pass --image-root DIR" in said
