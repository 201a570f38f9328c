"""Reasoning coherence (metric).

score = 0 without a final answer; otherwise the mean of
  supported = 1 if the final answer (its number, option letter or text) is stated in the last two
              turns' reasoning or the last observation, else 0;
  grounded  = share of turns with a substantive reasoning step (≥ 8 words);
  followed  = share of code turns whose observation is discussed by a later turn (a later turn exists
              and has ≥ 8 words of reasoning).
"""

from __future__ import annotations

import re
from typing import Any

from judges.answers import answers_match, first_number, option_letter, unwrap
from judges.base import Verdict
from schemas import sample as S
from schemas.dimensions import Dimension

MIN_WORDS = 8


def answer_stated(answer: str, text: str) -> bool:
    a = unwrap(answer)
    if option_letter(a) is not None:
        letter = option_letter(a)
        return f"({letter})" in text or f" {letter} " in f" {text} " or f"{letter}." in text
    if first_number(a) is not None:
        return any(
            answers_match(tok, a)
            for tok in re.findall(r"[-+]?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?%?", text)
        )
    return unwrap(a).lower() in text.lower()


class CoherenceJudge:
    DIMENSION = Dimension(
        "coherence",
        minimum=0.4,
        description="reasoning steps that support the final answer and follow up their observations; "
        "below: rejected",
    )
    name = "metric/coherence"
    dimension = DIMENSION.name
    needs = (S.TURNS, S.FINAL_ANSWER)

    def judge(self, row: dict[str, Any]) -> Verdict:
        turns = row.get(S.TURNS) or []
        answer = row.get(S.FINAL_ANSWER)
        if not turns:
            return Verdict(None, "no trajectory")
        if not answer or not answer.strip():
            return Verdict(0.0, "no final answer")
        tail = " ".join(t[S.TURN_REASONING] or "" for t in turns[-2:])
        tail += " " + (turns[-1][S.TURN_OBS_TEXT] or "")
        supported = 1.0 if answer_stated(answer, tail) else 0.0
        words = [len((t[S.TURN_REASONING] or "").split()) for t in turns]
        grounded = sum(w >= MIN_WORDS for w in words) / len(words)
        code_turns = [i for i, t in enumerate(turns) if t[S.TURN_CODE]]
        followed = (
            sum(i + 1 < len(turns) and words[i + 1] >= MIN_WORDS for i in code_turns) / len(code_turns)
            if code_turns
            else 1.0
        )
        score = (supported + grounded + followed) / 3
        return Verdict(
            round(score, 4),
            f"answer {'stated' if supported else 'not stated'} in the last steps; "
            f"{grounded:.0%} substantive turns; {followed:.0%} code results discussed",
        )
