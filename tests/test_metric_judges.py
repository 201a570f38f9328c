"""Metric judges of five dimensions on constructed samples with known answers
(visual gain has its own file, tests/test_visual_gain.py)."""

from __future__ import annotations

import pytest

from judges import metric_judges
from judges.alignment import AlignmentJudge
from judges.code_correctness import CodeCorrectnessJudge
from judges.coherence import CoherenceJudge
from judges.educational_value import EducationalValueJudge, operation_families
from judges.scientific_accuracy import ScientificAccuracyJudge
from schemas import sample as S


def turn(reasoning: str, code: str | None = None, obs: str | None = None, obs_images: int = 0):
    return {S.TURN_REASONING: reasoning, S.TURN_CODE: code, S.TURN_OBS_TEXT: obs,
            S.TURN_OBS_IMAGES: [{S.IMG_NAME: f"o{i}"} for i in range(obs_images)]}


def cell(i: int, status="ok", stdout="", fidelity: float | None = 1.0, images: int = 0, turn_index=None):
    return {S.CELL_INDEX: i, S.CELL_TURN: i if turn_index is None else turn_index, S.CELL_STATUS: status,
            S.CELL_STDOUT: stdout, S.CELL_ERROR: "", S.CELL_DURATION_MS: 1.0,
            S.CELL_IMAGES: [{S.IMG_NAME: f"c{k}"} for k in range(images)], S.CELL_FIDELITY: fidelity}


LONG = "We look at the zoomed crop carefully and read the small label next to the vertex."


def test_code_correctness_known_cases():
    judge = CodeCorrectnessJudge()
    assert judge.judge({S.REPLAY: []}).score is None
    assert judge.judge({S.REPLAY: [cell(0), cell(1)]}).score == 1.0
    assert judge.judge({S.REPLAY: [cell(0), cell(1, status="error", fidelity=None)]}).score == 0.5
    fabricated = judge.judge({S.REPLAY: [cell(0), cell(1, fidelity=0.4)]})
    assert fabricated.score == 0.0 and "does not match" in fabricated.why
    assert judge.judge({S.REPLAY: [cell(0, status="forbidden")]}).score == 0.0
    assert judge.judge({S.REPLAY: [cell(0, fidelity=0.9)]}).score == pytest.approx(0.9)


def test_scientific_accuracy_known_cases():
    judge = ScientificAccuracyJudge()
    assert judge.judge({S.GROUND_TRUTH: "37", S.FINAL_ANSWER: "37°"}).score == 1.0
    assert judge.judge({S.GROUND_TRUTH: "37", S.FINAL_ANSWER: "38"}).score == 0.0
    assert judge.judge({S.GROUND_TRUTH: None, S.FINAL_ANSWER: "38"}).score is None
    assert judge.judge({S.GROUND_TRUTH: "5", S.FINAL_ANSWER: ""}).score == 0.0


def test_coherence_known_cases():
    judge = CoherenceJudge()
    good = {S.TURNS: [turn(LONG, "print(37)", "37"), turn("The label reads 37 degrees, so angle C is 37 degrees.")],
            S.FINAL_ANSWER: "37"}
    assert judge.judge(good).score == 1.0
    unsupported = {**good, S.FINAL_ANSWER: "52"}  # nothing in the last steps says 52
    assert judge.judge(unsupported).score == pytest.approx(2 / 3, abs=1e-3)
    terse = {S.TURNS: [turn("ok", "print(1)"), turn("37")], S.FINAL_ANSWER: "37"}
    assert judge.judge(terse).score == pytest.approx(1 / 3, abs=1e-3)
    assert judge.judge({**good, S.FINAL_ANSWER: None}).score == 0.0


def test_alignment_known_cases():
    judge = AlignmentJudge()
    turns = [turn(LONG, "print(9)", "count = 9", obs_images=1),
             turn("The zoomed image shows 9 stars inside the box, so the count is 9.")]
    faithful = {S.QUESTION: "How many stars?", S.TURNS: turns, S.REPLAY: [cell(0, stdout="count = 9\n", images=1)]}
    assert judge.judge(faithful).score == 1.0
    # the record says 14, the text repeats 14, the replay printed 9 and drew no image
    lied = {S.QUESTION: "How many stars?",
            S.TURNS: [turn(LONG, "print(9)", "count = 14", obs_images=1),
                      turn("The zoomed image shows 14 stars inside the box.")],
            S.REPLAY: [cell(0, stdout="count = 9\n", images=0)]}
    v = judge.judge(lied)
    assert v.score == 0.0 and "14" in v.why
    # numbers that come from the question are not observation claims
    q = {S.QUESTION: "A box of 14 stars?", S.TURNS: [turn(LONG, "print(1)", "14"), turn("There were 14 before.")],
         S.REPLAY: [cell(0, stdout="1\n")]}
    assert judge.judge(q).score is None


def test_educational_value_known_cases():
    judge = EducationalValueJudge()
    code = "c = image.crop((1, 2, 3, 4)).resize((40, 40))\nimport cv2\ne = cv2.Canny(a, 10, 20)"
    assert operation_families(code) >= {"crop", "zoom", "edges"}
    rich = {S.TURNS: [turn(" ".join(["word"] * 30), code), turn(" ".join(["word"] * 30))]}
    assert judge.judge(rich).score == pytest.approx(1.0)
    bare = {S.TURNS: [turn("answer 3")]}
    assert judge.judge(bare).score < 0.4


def test_every_dimension_has_one_metric_judge_in_schema_order():
    assert tuple(j.dimension for j in metric_judges()) == S.DIMENSIONS
    for j in metric_judges():
        assert set(j.needs) <= set(S.SAMPLE_SCHEMA.names), j.name
