"""Educational value (metric): a worked example worth learning from.

score = 0.4 · band(turns, 2, 8) + 0.3 · min(1, distinct operation families / 3)
        + 0.3 · band(reasoning words, 40, 800)
band(x, lo, hi) is 1 inside [lo, hi] and falls off linearly outside (judges.base.band).
Operation families are recognised in the code: crop, resize/zoom, contrast, threshold,
edges, morphology, measure/label, filter, colour, plot/histogram, numeric analysis.
"""

from __future__ import annotations

import re
from typing import Any

from judges.base import Verdict, band
from schemas import sample as S
from schemas.dimensions import Dimension

OPERATION_FAMILIES = {
    "crop": r"\.crop\(|\[\s*\w*\s*:\s*\w*\s*,\s*\w*\s*:",
    "zoom": r"\.resize\(|cv2\.resize|rescale\(|zoom\(",
    "contrast": r"autocontrast|equalize|ImageEnhance|CLAHE|convertScaleAbs|rescale_intensity|normalize\(",
    "threshold": r"threshold|> *\d+\)|threshold_otsu",
    "edges": r"Canny|sobel|FIND_EDGES|Laplacian|canny\(",
    "morphology": r"morphology|dilate|erode|binary_opening|binary_closing|morphologyEx",
    "measure": r"measure\.label|regionprops|connectedComponents|findContours|label\(",
    "filter": r"GaussianBlur|gaussian\(|medianBlur|ImageFilter|median_filter|filter2D",
    "colour": r"cvtColor|\.convert\(|rgb2gray|rgb2hsv",
    "plot": r"plt\.|hist\(|histogram",
    "numeric": r"np\.(mean|sum|argmax|argmin|where|std|count_nonzero)|\.mean\(|\.sum\(",
}
_FAMILIES = {k: re.compile(v) for k, v in OPERATION_FAMILIES.items()}


def operation_families(code: str) -> set[str]:
    return {name for name, pat in _FAMILIES.items() if pat.search(code)}


class EducationalValueJudge:
    DIMENSION = Dimension(
        "educational_value",
        minimum=0.0,
        description="a worked example worth learning from (steps, operation variety, explanation); "
        "below: rejected (0 disables)",
    )
    name = "metric/educational_value"
    dimension = DIMENSION.name
    needs = (S.TURNS,)

    def judge(self, row: dict[str, Any]) -> Verdict:
        turns = row.get(S.TURNS) or []
        if not turns:
            return Verdict(None, "no trajectory")
        families: set[str] = set()
        for t in turns:
            families |= operation_families(t[S.TURN_CODE] or "")
        words = sum(len((t[S.TURN_REASONING] or "").split()) for t in turns)
        score = 0.4 * band(len(turns), 2, 8) + 0.3 * min(1.0, len(families) / 3) + 0.3 * band(words, 40, 800)
        return Verdict(
            round(score, 4),
            f"{len(turns)} turns, operations {sorted(families) or 'none'}, {words} words of reasoning",
        )
