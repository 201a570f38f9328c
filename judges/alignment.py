"""Multimodal alignment (metric): does the text say what the replayed code really showed?

For each code turn i, the next turn's reasoning is checked against the replay of cell i:
  numbers   — every number the reasoning quotes from the recorded observation of cell i (numbers that
              also occur in the question do not count) must occur in the replayed stdout/error;
  images    — if the reasoning talks about a visual result (zoom, crop, image, shows, visible ...)
              while the record shows images, the replay must have produced at least one image.
score = passed checks / checks; None when there is nothing to check.
"""

from __future__ import annotations

import re
from typing import Any

from judges.base import Verdict
from pipeline.stages.fidelity import number_present, numbers_in
from schemas import sample as S
from schemas.dimensions import Dimension

VISUAL_WORDS = re.compile(r"\b(zoom\w*|crop\w*|image|enhanced|shows?|visible|magnif\w*|edges?|mask)\b", re.I)


class AlignmentJudge:
    DIMENSION = Dimension(
        "alignment",
        minimum=0.5,
        description="the reasoning says what the replayed code really showed (numbers, images); "
        "below: rejected",
    )
    name = "metric/alignment"
    dimension = DIMENSION.name
    needs = (S.QUESTION, S.TURNS, S.REPLAY)

    def judge(self, row: dict[str, Any]) -> Verdict:
        turns = row.get(S.TURNS) or []
        cells = {c[S.CELL_TURN]: c for c in row.get(S.REPLAY) or []}
        question_numbers = numbers_in(row.get(S.QUESTION))
        checks = passed = 0
        misses: list[str] = []
        for i, cell in sorted(cells.items()):
            if i + 1 >= len(turns):
                continue
            reasoning = turns[i + 1][S.TURN_REASONING] or ""
            recorded = numbers_in(turns[i][S.TURN_OBS_TEXT])
            replayed = numbers_in((cell[S.CELL_STDOUT] or "") + "\n" + (cell[S.CELL_ERROR] or ""))
            for x in numbers_in(reasoning):
                if number_present(x, recorded) and not number_present(x, question_numbers):
                    checks += 1
                    if number_present(x, replayed):
                        passed += 1
                    else:
                        misses.append(f"turn {i + 1} quotes {x:g}, replay of cell {i} does not show it")
            if turns[i][S.TURN_OBS_IMAGES] and VISUAL_WORDS.search(reasoning):
                checks += 1
                if cell[S.CELL_IMAGES]:
                    passed += 1
                else:
                    misses.append(f"turn {i + 1} describes an image cell {i} never produced")
        if checks == 0:
            return Verdict(None, "no observation-dependent claims to check")
        why = f"{passed}/{checks} claims about observations confirmed by the replay"
        return Verdict(round(passed / checks, 4), why + (f"; {misses[0]}" if misses else ""))
