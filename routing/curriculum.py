"""The four-stage curriculum (S1-VL): which curated samples train which stage. Pure functions.

Stages:
  sft-science  scientific multimodal SFT: every accepted sample (twi and text routes).
  sft-twi      TwI cold-start SFT: every twi sample plus ``text_share`` × (number of twi samples) text
               samples, so the model also learns when not to call tools.
  rl-1         first RL round: verifiable samples (ground truth present) of medium difficulty
               (``rl1_min_difficulty`` ≤ d ≤ ``rl1_max_difficulty``).
  rl-2         second RL round: harder verifiable samples (d ≥ ``rl2_min_difficulty``) that also pass
               stricter score thresholds (every available score ≥ ``rl2_min_score``).

Difficulty d ∈ [0, 1] from signals every curated sample has:
  d = 0.35 · min(1, code cells / 3)            how many tool steps the solution needed
    + 0.35 · visual_gain                       how much the answer depends on fine visual detail
    + 0.15 · min(1, input megapixels / 4)      how large the image is relative to a ~1 MP budget
    + 0.15 · min(1, reasoning words / 400)     how long the worked reasoning is
Selection inside a stage is deterministic: samples are ordered by a hash of their id.
Optional discipline balancing downsamples the stage to a target mix (shares per discipline).
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas import sample as S

STAGES = ("sft-science", "sft-twi", "rl-1", "rl-2")


class CurriculumPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text_share: float = Field(0.3, ge=0, description="text samples in sft-twi per twi sample")
    rl1_min_difficulty: float = Field(0.2, ge=0, le=1)
    rl1_max_difficulty: float = Field(0.7, ge=0, le=1)
    rl2_min_difficulty: float = Field(0.5, ge=0, le=1)
    rl2_min_score: float = Field(0.7, ge=0, le=1)
    balance: dict[str, float] | None = Field(None, description="target share per discipline, e.g. {physics: 0.5}")

    @field_validator("balance")
    @classmethod
    def _shares(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        unknown = set(v) - set(S.DISCIPLINES)
        if unknown:
            raise ValueError(f"unknown disciplines {sorted(unknown)}; choose from {list(S.DISCIPLINES)}")
        if any(x < 0 for x in v.values()) or sum(v.values()) <= 0:
            raise ValueError("balance shares must be non-negative and not all zero")
        return v


def difficulty(row: dict[str, Any]) -> float:
    cells = len(row.get(S.REPLAY) or [])
    gain = row.get(S.score_column("visual_gain")) or 0.0
    mp = sum((i[S.IMG_WIDTH] or 0) * (i[S.IMG_HEIGHT] or 0) for i in row.get(S.IMAGES) or []) / 1e6
    words = sum(len((t[S.TURN_REASONING] or "").split()) for t in row.get(S.TURNS) or [])
    d = 0.35 * min(1.0, cells / 3) + 0.35 * gain + 0.15 * min(1.0, mp / 4) + 0.15 * min(1.0, words / 400)
    return round(min(1.0, d), 4)


def _order(row: dict[str, Any]) -> str:
    return hashlib.sha256(row[S.SAMPLE_ID].encode()).hexdigest()


def _verifiable(row: dict[str, Any]) -> bool:
    return bool((row.get(S.GROUND_TRUTH) or "").strip())


def balance(rows: list[dict[str, Any]], target: dict[str, float]) -> list[dict[str, Any]]:
    """Largest subset whose discipline mix matches ``target`` (disciplines not named are dropped)."""
    total = sum(target.values())
    shares = {d: s / total for d, s in target.items() if s > 0}
    by_d: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=_order):
        by_d.setdefault(r[S.DISCIPLINE], []).append(r)
    # the scarcest discipline relative to its share bounds the total
    n = min((len(by_d.get(d, [])) / s for d, s in shares.items()), default=0)
    out = []
    for d, s in shares.items():
        out.extend(by_d.get(d, [])[: int(n * s)])
    return sorted(out, key=_order)


def select_stage(rows: list[dict[str, Any]], stage: str, policy: CurriculumPolicy) -> list[dict[str, Any]]:
    """The rows of one stage, in deterministic order."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {list(STAGES)}")
    accepted = sorted((r for r in rows if r[S.ROUTE] in (S.ROUTE_TWI, S.ROUTE_TEXT)), key=_order)
    twi = [r for r in accepted if r[S.ROUTE] == S.ROUTE_TWI]
    text = [r for r in accepted if r[S.ROUTE] == "text"]
    if stage == "sft-science":
        chosen = accepted
    elif stage == "sft-twi":
        chosen = twi + text[: int(round(policy.text_share * len(twi)))]
    elif stage == "rl-1":
        chosen = [r for r in accepted if _verifiable(r)
                  and policy.rl1_min_difficulty <= difficulty(r) <= policy.rl1_max_difficulty]
    else:
        chosen = [
            r for r in accepted
            if _verifiable(r) and difficulty(r) >= policy.rl2_min_difficulty
            and all(r.get(c) is None or r[c] >= policy.rl2_min_score
                    for c in (S.score_column(d) for d in S.DIMENSIONS if d != "visual_gain"))
        ]
    chosen = sorted(chosen, key=_order)
    return balance(chosen, policy.balance) if policy.balance else chosen
