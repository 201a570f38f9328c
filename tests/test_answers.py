import pytest

from judges.answers import answers_match, quantity, unit_factor, unwrap

CASES = [
    # (prediction, ground truth, expected)
    # --- plain numbers and written precision
    ("37", "37", True),
    ("37°", "37", True),
    ("The angle is 37 degrees", "37", True),
    ("36", "37", False),
    ("938 m", "933 m", False),  # a misread label is wrong, however close
    ("933", "933 m", True),
    ("12.54", "12.5", True),
    ("12.6", "12.5", False),
    ("13", "12.5", False),
    ("9.81", "9.8", True),
    ("9.7", "9.8", False),
    ("1,250", "1250", True),
    ("1250.0", "1,250", True),
    ("-3.2", "-3.2", True),
    ("3.2", "-3.2", False),
    ("0", "0", True),
    ("0.4", "0", True),  # gold "0" is written to the unit
    ("0.001", "0.000", False),
    ("There are 9 stars", "9", True),
    ("There are 14 stars", "9", False),
    ("pH 8.7", "8.7", True),
    ("pH = 8.74", "8.7", True),
    ("8.8", "8.7", False),
    # --- tags and boxes
    ("<answer>12.5 cm</answer>", "12.5", True),
    ("\\boxed{12.5}", "12.5 cm", True),
    ("<answer>\\boxed{7}</answer>", "7", True),
    ("so the answer is \\boxed{42}.", "42", True),
    ("\\boxed{41}", "42", False),
    # --- fractions, percentages, scientific notation
    ("0.5", "1/2", True),
    ("\\boxed{\\frac{1}{2}}", "1/2", True),
    ("\\frac12", "0.5", True),
    ("0.3333", "1/3", True),
    ("0.33", "1/3", False),
    ("50%", "0.5", True),
    ("0.5", "50%", True),
    ("45%", "50%", False),
    ("4.1e3", "4100", True),
    ("4.1 \\times 10^{3}", "4100", True),
    ("6.02 × 10^23", "6.02e23", True),
    ("6.2e23", "6.02e23", False),
    ("2.5e-7", "2.5 \\times 10^{-7}", True),
    # --- units with SI prefixes
    ("5 km", "5000 m", True),
    ("5000 m", "5 km", True),
    ("50 km", "5000 m", False),
    ("250 mL", "0.25 L", True),
    ("0.25 L", "250 mL", True),
    ("300 nm", "3e-7 m", True),
    ("1.5 kPa", "1500 Pa", True),
    ("2 min", "120 s", True),
    ("2 h", "120 min", True),
    ("5 kg", "5 m", False),
    ("3 A", "3 V", False),
    ("500 mg", "0.5 g", True),
    ("1.2 eV", "1.2 eV", True),
    ("25 mL", "25.0 mL", True),
    # --- LaTeX numeric expressions and angles
    ("\\frac{\\sqrt{2}}{2}", "0.7071", True),
    ("0.7071", "\\frac{\\sqrt{2}}{2}", True),
    ("0.70", "\\frac{\\sqrt{2}}{2}", False),
    ("3\\pi", "9.4248", True),
    ("\\pi/2", "1.5708", True),
    ("\\sqrt{3}", "1.732", True),
    ("90°", "90", True),
    # --- symbolic equivalence
    ("2(x+1)", "2x+2", True),
    ("2x + 3", "2x+2", False),
    ("x^2 - 1", "(x-1)(x+1)", True),
    ("\\frac{x}{2}", "x/2", True),
    ("0.5x", "\\frac{x}{2}", True),
    ("x^2", "x^3", False),
    ("\\sqrt{x^2}", "x", True),  # positive sample points
    ("(a+b)^2", "a^2 + 2ab + b^2", True),
    ("a^2 + b^2", "(a+b)^2", False),
    # --- option letters
    ("C", "C", True),
    ("(C)", "C", True),
    ("C. 12 cm", "C", True),
    ("Option C", "(C)", True),
    ("c", "C", True),
    ("B", "C", False),
    ("no idea", "C", False),
    ("(B) 4 stars", "B", True),
    # --- text
    ("north-east", "North East", True),
    ("mitochondria", "Mitochondria.", True),
    ("nucleus", "mitochondria", False),
    ("Mars", "Jupiter", False),
    # --- missing values
    ("", "5", False),
    (None, "5", False),
    ("5", None, False),
    ("5", "", False),
]


def test_table_is_large_enough():
    assert len(CASES) >= 80


@pytest.mark.parametrize(("pred", "gold", "expected"), CASES)
def test_answer_table(pred, gold, expected):
    assert answers_match(pred, gold) is expected


def test_unwrap_nested_boxed():
    assert unwrap("so \\boxed{x^{2}+1}") == "x^{2}+1"
    assert unwrap("<answer>\\boxed{7}</answer>") == "7"


def test_units_and_quantities():
    assert unit_factor("km") == ("length", 1000.0)
    assert unit_factor("stars") is None
    q = quantity("12.5 cm")
    assert q.kind == "length" and q.value == pytest.approx(0.125) and q.raw == 12.5


VSTAR_QUESTION = (
    "Question: What is the color of the man's cap?\nOptions: \nA. The color of the man's cap is white.\n"
    "B. The color of the man's cap is blue.\nC. The color of the man's cap is black.\n"
    "D. The color of the man's cap is red.\n\n\nThink first, call **image_zoom_in_tool** if needed, then answer."
)
BUOY_QUESTION = (
    "Question: What is the color of the life buoy?\nOptions: \nA. The color of the life buoy is red and white.\n"
    "B. The color of the life buoy is blue and white.\nC. The color of the life buoy is green and white.\n"
    "D. The color of the life buoy is yellow and red."
)
# answers as real rollouts write them (DeepEyes V*, VisualSketchpad), read as a person reads them
REAL_CASES = [
    ("The man's cap is white.", "The color of the man's cap is white.", VSTAR_QUESTION, True),
    ("The color of the man's cap is white.", "The color of the man's cap is white.", VSTAR_QUESTION, True),
    ("A", "The color of the man's cap is white.", VSTAR_QUESTION, True),
    ("The man's cap is blue.", "The color of the man's cap is white.", VSTAR_QUESTION, False),
    ("The cap is white or blue.", "The color of the man's cap is white.", VSTAR_QUESTION, False),  # two options
    ("The man's cap is white.", "A", VSTAR_QUESTION, True),
    ("The maximum flow from the source node (0) to the sink node (2) is 10", "10", None, True),
    ("The maximum flow from the source node (0) to the sink node (2) is 9", "10", None, False),
    ("The cap is white", "white", None, True),
    ("The cap is whitish grey", "white", None, False),
    ("10", "10", None, True),
    ("The life buoy is red and white.", "The color of the life buoy is red and white.", BUOY_QUESTION, True),
    ("The life buoy is red.", "The color of the life buoy is red and white.", BUOY_QUESTION, False),
    ("It is yellow and red", "D", BUOY_QUESTION, True),
]


@pytest.mark.parametrize(("pred", "gold", "question", "expected"), REAL_CASES)
def test_real_rollout_answers(pred, gold, question, expected):
    assert answers_match(pred, gold, question=question) is expected
