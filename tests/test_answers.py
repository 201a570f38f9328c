import pytest

from judges.answers import answers_match, unwrap

CASES = [
    # (prediction, ground truth, expected)
    ("37", "37", True),
    ("37°", "37", True),
    ("The angle is 37 degrees", "37", True),
    ("<answer>12.5 cm</answer>", "12.5", True),
    ("\\boxed{12.5}", "12.5 cm", True),
    ("\\boxed{\\frac{1}{2}}", "1/2", False),  # LaTeX fractions are the LLM/sympy judge's job
    ("0.5", "1/2", True),
    ("50%", "0.5", True),
    ("12.54", "12.5", True),  # within gold's written precision
    ("12.6", "12.5", False),
    ("13", "12.5", False),
    ("938 m", "933 m", False),  # a misread label is wrong, however close
    ("933", "933 m", True),
    ("0.3333", "1/3", True),
    ("0.33", "1/3", False),
    ("9.81", "9.8", True),
    ("1,250", "1250", True),
    ("-3.2", "-3.2", True),
    ("3.2", "-3.2", False),
    ("0", "0", True),
    ("0.4", "0", True),  # gold "0" is written to the unit
    ("0.001", "0.000", False),
    ("C", "C", True),
    ("(C)", "C", True),
    ("C. 12 cm", "C", True),
    ("Option C", "(C)", True),
    ("B", "C", False),
    ("c", "C", True),
    ("no idea", "C", False),
    ("north-east", "North East", True),
    ("mitochondria", "Mitochondria.", True),
    ("nucleus", "mitochondria", False),
    ("", "5", False),
    (None, "5", False),
    ("5", None, False),
    ("4.1e3", "4100", True),
    ("pH 8.7", "8.7", True),
    ("There are 9 stars", "9", True),
    ("There are 14 stars", "9", False),
]


@pytest.mark.parametrize(("pred", "gold", "expected"), CASES)
def test_answer_table(pred, gold, expected):
    assert answers_match(pred, gold) is expected


def test_unwrap_nested_boxed():
    assert unwrap("so \\boxed{x^{2}+1}") == "x^{2}+1"
    assert unwrap("<answer>\\boxed{7}</answer>") == "7"
