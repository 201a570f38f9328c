"""TwI -> text-only conversion: keep the reasoning, drop code cells and sandbox outputs."""

from __future__ import annotations

from typing import Any

from schemas import sample as S


def to_text_response(row: dict[str, Any]) -> str:
    """The trajectory as pure reasoning followed by the final answer."""
    steps = [(t[S.TURN_REASONING] or "").strip() for t in row.get(S.TURNS) or []]
    body = "\n\n".join(s for s in steps if s)
    answer = (row.get(S.FINAL_ANSWER) or "").strip()
    return f"{body}\n\n<answer>{answer}</answer>" if answer else body
