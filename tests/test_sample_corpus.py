"""Tests of the procedurally generated sample corpus (the sample_corpus package)."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest
from PIL import Image

import sample_corpus as sc
from pipeline.formats.native import (
    KEY_ANSWER,
    KEY_CODE,
    KEY_DATASET,
    KEY_DISCIPLINE,
    KEY_FINAL_ANSWER,
    KEY_ID,
    KEY_IMAGES,
    KEY_OBS_IMAGES,
    KEY_OBS_TEXT,
    KEY_OBSERVATION,
    KEY_QUESTION,
    KEY_REASONING,
    KEY_TURNS,
)
from pipeline.sandbox import InputImage, SandboxLimits, ZygoteSandbox
from pipeline.sandbox.child.worker import Worker
from sample_corpus import execution, writer
from sample_corpus.drawing import decoy_box
from schemas.sample import (
    DISCIPLINES,
    IMG_SHA256,
    ROUTES,
    TURN_CODE,
    TURN_OBS_IMAGES,
    TURN_OBS_TEXT,
    TURN_REASONING,
    compute_sample_id,
)

N_FULL = 48
N_SMALL = 14


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _load(out: Path) -> tuple[list[dict], list[dict]]:
    return _read_jsonl(out / sc.CORPUS_FILE), _read_jsonl(out / sc.LABELS_FILE)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record_files(rec: dict) -> list[str]:
    files = list(rec[KEY_IMAGES])
    for t in rec[KEY_TURNS]:
        files += t[KEY_OBSERVATION][KEY_OBS_IMAGES]
    return files


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One n=48 build shared by the module; every cell the generator executes is recorded."""
    out = tmp_path_factory.mktemp("sample48")
    executed: list[str] = []
    original = execution.CellSession.run

    def spy(self: execution.CellSession, code: str) -> tuple[str, list[bytes]]:
        executed.append(code)
        return original(self, code)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(execution.CellSession, "run", spy)
        summary = sc.build_sample_corpus(out, n=N_FULL, seed=0)
    records, labels = _load(out)
    return {"out": out, "summary": summary, "executed": executed, "records": records, "labels": labels}


@pytest.mark.timeout(150)
def test_plan_summary_and_labels(full: dict) -> None:
    records, labels, summary = full["records"], full["labels"], full["summary"]
    assert len(records) == len(labels) == N_FULL
    assert summary["n"] == N_FULL
    assert set(summary["by_discipline"]) == set(sc.CORPUS_DISCIPLINES)
    assert all(v == 8 for v in summary["by_discipline"].values())
    assert set(summary["by_case"]) == set(sc.CASES)
    assert summary["by_case"]["zoom"] == 12 and all(
        summary["by_case"][c] == 6 for c in sc.CASES if c != "zoom"
    )
    # every discipline sees every case (2 zooms + one of each other)
    per = Counter((lb[sc.LABEL_DISCIPLINE], lb[sc.LABEL_CASE]) for lb in labels)
    for d in sc.CORPUS_DISCIPLINES:
        assert per[(d, "zoom")] == 2
        assert all(per[(d, c)] == 1 for c in sc.CASES if c != "zoom")
    for i, (rec, lb) in enumerate(zip(records, labels, strict=True)):
        d, c = sc.case_plan(N_FULL)[i]
        assert d == sc.CORPUS_DISCIPLINES[i % 6] and c == sc.CASE_CYCLE[i // 6]
        assert lb[sc.LABEL_DISCIPLINE] == rec[KEY_DISCIPLINE] == d
        assert lb[sc.LABEL_CASE] == c
        assert lb[sc.LABEL_EXPECTED_ROUTE] == sc.EXPECTED_ROUTE[c]
        assert lb[sc.LABEL_EXPECTED_ROUTE] in ROUTES and d in DISCIPLINES
        assert set(lb) == {"sample_id", "expected_route", "case", "discipline"}
        assert rec[KEY_ID] == f"{sc.ID_PREFIX[d]}-{i:04d}"
    assert set(sc.EXPECTED_ROUTE) == set(sc.CASES)


@pytest.mark.timeout(150)
def test_native_records_are_well_formed(full: dict) -> None:
    out = full["out"]
    for rec in full["records"]:
        assert rec[KEY_DATASET] == sc.DATASET_NAME
        assert rec[KEY_QUESTION] and rec[KEY_ANSWER] and rec[KEY_FINAL_ANSWER]
        turns = rec[KEY_TURNS]
        assert 2 <= len(turns) <= 4
        assert turns[-1][KEY_CODE] is None, "the last turn is reasoning only"
        assert all(t[KEY_CODE] for t in turns[:-1]), "1-3 turns with code before the final turn"
        for t in turns:
            assert len(t[KEY_REASONING]) > 80
            obs = t[KEY_OBSERVATION]
            assert set(obs) == {KEY_OBS_TEXT, KEY_OBS_IMAGES}
            if t[KEY_CODE] is not None:
                assert obs[KEY_OBS_TEXT]
        for rel in _record_files(rec):
            assert rel.startswith(sc.IMAGES_DIR + "/") and not os.path.isabs(rel)
            with Image.open(out / rel) as im:
                assert im.format == "PNG"
    # every file in images/ belongs to a record
    referenced = {rel for rec in full["records"] for rel in _record_files(rec)}
    on_disk = {f"{sc.IMAGES_DIR}/{p.name}" for p in (out / sc.IMAGES_DIR).iterdir()}
    assert referenced == on_disk


@pytest.mark.timeout(150)
def test_sample_ids_unique_and_recomputable(full: dict) -> None:
    out = full["out"]
    ids = [lb[sc.LABEL_SAMPLE_ID] for lb in full["labels"]]
    assert len(set(ids)) == len(ids)
    for rec, lb in zip(full["records"], full["labels"], strict=True):
        turns = [
            {
                TURN_REASONING: t[KEY_REASONING],
                TURN_CODE: t[KEY_CODE],
                TURN_OBS_TEXT: t[KEY_OBSERVATION][KEY_OBS_TEXT],
                TURN_OBS_IMAGES: [{IMG_SHA256: _sha(out / p)} for p in t[KEY_OBSERVATION][KEY_OBS_IMAGES]],
            }
            for t in rec[KEY_TURNS]
        ]
        hashes = [_sha(out / p) for p in rec[KEY_IMAGES]]
        assert (
            compute_sample_id(rec[KEY_QUESTION], hashes, turns, rec[KEY_FINAL_ANSWER])
            == lb[sc.LABEL_SAMPLE_ID]
        )


@pytest.mark.timeout(150)
def test_image_sizes_and_corpus_size(full: dict) -> None:
    out = full["out"]
    big: Counter[str] = Counter()
    for rec, lb in zip(full["records"], full["labels"], strict=True):
        with Image.open(out / rec[KEY_IMAGES][0]) as im:
            w, h = im.size
        if lb[sc.LABEL_CASE] == "decorative":
            assert max(w, h) <= 800
        else:
            assert max(w, h) >= 2000
        if lb[sc.LABEL_CASE] == "zoom" and max(w, h) >= 3000:
            big[rec[KEY_DISCIPLINE]] += 1
    assert set(big) == set(sc.CORPUS_DISCIPLINES), "at least one >=3000 px zoom image per discipline"
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert total < 80 * 2**20
    assert max(p.stat().st_size for p in (out / sc.IMAGES_DIR).iterdir()) < 5 * 2**20


@pytest.mark.timeout(150)
def test_answers_follow_the_case(full: dict) -> None:
    for rec, lb in zip(full["records"], full["labels"], strict=True):
        case, final, truth = lb[sc.LABEL_CASE], rec[KEY_FINAL_ANSWER], rec[KEY_ANSWER]
        if case in ("zoom", "decorative", "redundant", "hostile"):
            assert final == truth, rec[KEY_ID]
            assert final in rec[KEY_TURNS][-1][KEY_REASONING]
        elif case in ("wrong_answer", "fabricated"):
            assert final != truth, rec[KEY_ID]
        if case == "zoom":
            # the zoom crop is upscaled 3-4x and the reasoning quotes what the code printed
            first = rec[KEY_TURNS][0]
            m = re.search(
                r"crop box: \((\d+), (\d+), (\d+), (\d+)\) -> zoom size: \((\d+), (\d+)\)",
                first[KEY_OBSERVATION][KEY_OBS_TEXT],
            )
            assert m, rec[KEY_ID]
            x0, y0, x1, y1, zw, zh = map(int, m.groups())
            assert zw // (x1 - x0) in (3, 4) and zh // (y1 - y0) in (3, 4)
            with Image.open(full["out"] / first[KEY_OBSERVATION][KEY_OBS_IMAGES][0]) as im:
                assert im.size == (zw, zh)
            assert m.group(0) in rec[KEY_TURNS][1][KEY_REASONING]
        if case == "failing_code":
            texts = [t[KEY_OBSERVATION][KEY_OBS_TEXT] or "" for t in rec[KEY_TURNS]]
            assert any("Traceback (most recent call last)" in t for t in texts)
        if case == "decorative":
            assert rec[KEY_TURNS][0][KEY_OBSERVATION][KEY_OBS_IMAGES]


@pytest.mark.timeout(200)
def test_recorded_observations_match_reexecution(full: dict) -> None:
    """Faithful cases: recorded stdout and image bytes == a fresh replay; fabricated: they differ."""
    out = full["out"]
    checked = Counter()
    for rec, lb in zip(full["records"], full["labels"], strict=True):
        case = lb[sc.LABEL_CASE]
        if case == "hostile":
            continue
        inputs = [(out / p).read_bytes() for p in rec[KEY_IMAGES]]
        code_turns = [t for t in rec[KEY_TURNS] if t[KEY_CODE] is not None]
        fresh = execution.execute_cells([t[KEY_CODE] for t in code_turns], inputs)
        same = []
        for t, (text, images) in zip(code_turns, fresh, strict=True):
            obs = t[KEY_OBSERVATION]
            recorded_images = [(out / p).read_bytes() for p in obs[KEY_OBS_IMAGES]]
            same.append(obs[KEY_OBS_TEXT] == text and recorded_images == images)
        if case == "fabricated":
            assert not all(same), f"{rec[KEY_ID]}: fabricated observation equals the real output"
        else:
            assert all(same), f"{rec[KEY_ID]}: recorded observation differs from re-execution"
        checked[case] += 1
    assert set(checked) == set(sc.CASES) - {"hostile"}


def test_generator_and_sandbox_run_a_cell_with_one_runner(tmp_path: Path) -> None:
    """One implementation of the cell rules: the generator's session runs its cells with the very
    class the sandbox's worker runs a cell with, and no module of the generator runs code itself."""
    worker = Worker(
        {"limits": asdict(SandboxLimits()), "work_dir": str(tmp_path), "inputs": [], "req_fd": 0, "resp_fd": 1}
    )
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format="PNG")
    session = execution.CellSession(tmp_path / "work", [buf.getvalue()])
    assert type(session.runner) is type(worker.cells)
    for path in Path(sc.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert not called & {"exec", "eval", "compile"}, f"{path.name} runs code itself"
    # the sandbox's rules, in-process: state shared between cells, new files as PNG, the cell's traceback
    text, images = session.run('image.crop((0, 0, 10, 10)).save("a.jpg")\nk = 2\nprint("ok")\n')
    assert text == "ok\n" and len(images) == 1 and images[0].startswith(b"\x89PNG")
    text, images = session.run("print(k)\n1 / (k - 2)\n")
    assert text.startswith("2\nTraceback") and 'File "<cell1>", line 2' in text and images == []
    assert text.endswith("ZeroDivisionError: division by zero\n")


@pytest.mark.timeout(300)
def test_recorded_observations_are_what_the_sandbox_replays(full: dict) -> None:
    """Byte for byte, the recorded observations (text, images) of one record of each faithful case
    are what the replay sandbox itself produces for the record's cells (text = stdout + error)."""
    out = full["out"]
    picked: dict[str, dict] = {}
    for rec, lb in zip(full["records"], full["labels"], strict=True):
        if lb[sc.LABEL_CASE] not in ("fabricated", "hostile"):
            picked.setdefault(lb[sc.LABEL_CASE], rec)
    uid = 60000 + os.getpid() % 5000
    with ZygoteSandbox(uid=uid, gid=uid) as box:
        for rec in picked.values():
            inputs = [InputImage(f"input_{k}.png", (out / p).read_bytes(), p) for k, p in enumerate(rec[KEY_IMAGES])]
            code_turns = [t for t in rec[KEY_TURNS] if t[KEY_CODE] is not None]
            for t, o in zip(code_turns, box.replay([t[KEY_CODE] for t in code_turns], inputs), strict=True):
                obs = t[KEY_OBSERVATION]
                assert obs[KEY_OBS_TEXT] == o.stdout + o.error, (rec[KEY_ID], o.status)
                assert [(out / p).read_bytes() for p in obs[KEY_OBS_IMAGES]] == [png for _, png in o.images]
    assert set(picked) == set(sc.CASES) - {"fabricated", "hostile"}


@pytest.mark.timeout(150)
def test_observations_are_portable(full: dict) -> None:
    for rec in full["records"]:
        for t in rec[KEY_TURNS]:
            text = t[KEY_OBSERVATION][KEY_OBS_TEXT] or ""
            assert str(full["out"]) not in text
            assert "site-packages" not in text and "/tmp/twi-sample" not in text
            assert 'File "/' not in text, "tracebacks must not leak host paths"


@pytest.mark.timeout(150)
def test_hostile_cells_never_executed(full: dict) -> None:
    hostile = [
        rec for rec, lb in zip(full["records"], full["labels"], strict=True) if lb[sc.LABEL_CASE] == "hostile"
    ]
    assert len(hostile) == 6
    hostile_codes = {t[KEY_CODE] for rec in hostile for t in rec[KEY_TURNS] if t[KEY_CODE]}
    assert hostile_codes and not hostile_codes & set(full["executed"])
    markers = ("socket", "/etc/shadow", "/etc/twi_pwned", "bash_history", "os.system", "subprocess", "../")
    for code in hostile_codes:
        assert any(m in code for m in markers)
    assert len({next(m for m in markers if m in c) for c in hostile_codes}) >= 4, "hostile variants vary"
    for path in sc.HOSTILE_ARTIFACTS:
        assert not os.path.exists(path)
    # every hostile observation is invented but looks like a success
    for rec in hostile:
        obs = rec[KEY_TURNS][0][KEY_OBSERVATION]
        assert "Traceback" not in obs[KEY_OBS_TEXT] and obs[KEY_OBS_IMAGES]
    # network access only ever targets loopback
    every_code = [t[KEY_CODE] for rec in full["records"] for t in rec[KEY_TURNS] if t[KEY_CODE]]
    for code in every_code:
        for ip in re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", code):
            assert ip.startswith("127."), ip
        assert "http" not in code


@pytest.mark.timeout(120)
def test_deterministic_and_seed_dependent(full: dict, tmp_path: Path) -> None:
    # A second, independent build (n=14, same seed) reproduces the first 14 records byte for byte.
    again = tmp_path / "again"
    sc.build_sample_corpus(again, n=N_SMALL, seed=0)
    full_lines = (full["out"] / sc.CORPUS_FILE).read_text(encoding="utf-8").splitlines()
    again_lines = (again / sc.CORPUS_FILE).read_text(encoding="utf-8").splitlines()
    assert again_lines == full_lines[:N_SMALL]
    labels_full = (full["out"] / sc.LABELS_FILE).read_text(encoding="utf-8").splitlines()
    assert (again / sc.LABELS_FILE).read_text(encoding="utf-8").splitlines() == labels_full[:N_SMALL]
    files = sorted(p.name for p in (again / sc.IMAGES_DIR).iterdir())
    assert files
    for name in files:
        assert (again / sc.IMAGES_DIR / name).read_bytes() == (
            full["out"] / sc.IMAGES_DIR / name
        ).read_bytes()
    # A different seed gives different content.
    other = tmp_path / "other"
    sc.build_sample_corpus(other, n=N_SMALL, seed=1)
    other_lines = (other / sc.CORPUS_FILE).read_text(encoding="utf-8").splitlines()
    assert other_lines != again_lines
    ids_other = {lb[sc.LABEL_SAMPLE_ID] for lb in _read_jsonl(other / sc.LABELS_FILE)}
    ids_again = {lb[sc.LABEL_SAMPLE_ID] for lb in _read_jsonl(again / sc.LABELS_FILE)}
    assert not ids_other & ids_again
    assert (other / sc.IMAGES_DIR / "math-0000.png").read_bytes() != (
        again / sc.IMAGES_DIR / "math-0000.png"
    ).read_bytes()


@pytest.mark.timeout(90)
def test_ensure_sample_corpus_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cache"
    calls: list[tuple[int, int]] = []
    real_build = writer.build_sample_corpus

    def counting_build(out_dir: Path, n: int = 48, seed: int = 0) -> dict:
        calls.append((n, seed))
        return real_build(out_dir, n, seed)

    monkeypatch.setattr(writer, "build_sample_corpus", counting_build)
    path = sc.ensure_sample_corpus(out, n=6, seed=3)
    assert path == out / sc.CORPUS_FILE and path.is_file()
    assert len(_read_jsonl(path)) == 6 and calls == [(6, 3)]
    marker = json.loads((out / sc.MARKER_FILE).read_text())
    assert marker == {"n": 6, "seed": 3, "version": sc.CORPUS_VERSION}
    before = path.read_bytes()
    assert sc.ensure_sample_corpus(out, n=6, seed=3) == path
    assert calls == [(6, 3)], "cached: no rebuild"
    assert path.read_bytes() == before
    # a different n rebuilds and replaces the old images
    sc.ensure_sample_corpus(out, n=7, seed=3)
    assert calls[-1] == (7, 3) and len(_read_jsonl(path)) == 7
    # a stale version marker rebuilds too
    (out / sc.MARKER_FILE).write_text(json.dumps({"n": 7, "seed": 3, "version": "0"}))
    sc.ensure_sample_corpus(out, n=7, seed=3)
    assert calls[-1] == (7, 3) and len(calls) == 3
    referenced = {rel for rec in _read_jsonl(path) for rel in _record_files(rec)}
    assert referenced == {f"{sc.IMAGES_DIR}/{p.name}" for p in (out / sc.IMAGES_DIR).iterdir()}


@pytest.mark.timeout(10)
def test_case_plan_and_bad_arguments(tmp_path: Path) -> None:
    plan = sc.case_plan(50)
    assert plan[0] == ("mathematics", "zoom") and plan[7] == ("physics", "decorative")
    assert plan[47] == ("biology", "hostile") and plan[48] == ("mathematics", "zoom")
    assert sc.case_plan(1) == [("mathematics", "zoom")]
    with pytest.raises(ValueError):
        sc.build_sample_corpus(tmp_path / "x", n=0)


def test_decoy_box_terminates_when_no_point_is_far_enough():
    """A scene whose outlined box is large for its image has no point 3 box sides away: the decoy
    is then the farthest same-size region inside the image (building n=480 used to hang here)."""
    import numpy as np

    rng = np.random.default_rng(0)
    view = (100, 100, 500, 500)
    box = decoy_box(rng, view, (1200, 900), (100, 100), 400)
    assert box[2] - box[0] == 400 and box[3] - box[1] == 400
    assert box[0] >= 0 and box[1] >= 0 and box[2] <= 1200 and box[3] <= 900
    assert box[0] >= 600  # the far side of the image from the box at (100, 100)
