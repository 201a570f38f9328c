"""Routing: scores -> (route, reasons). Pure functions, no I/O; reasons are data.

Order of decisions (default policy in routing.policy.RoutingPolicy):
 1. invalid input                         -> rejected  [invalid_input:<kind>], except a trajectory
    that calls a tool the sandbox cannot have (input_error ``unsupported_tool:<name>``, or
    ``unsupported_tool`` with the name in input_detail) -> rejected [unsupported_tool:<name>]
 2. any reject reason below                -> rejected  [all that apply]
    duplicate_of:<sample_id> and contaminated:<benchmark> (verdicts of pipeline.dedup, carried
    in the duplicate_of / contaminated_by columns), no_trajectory (a prompt with an empty turn
    list, e.g. an RL input record; no score reason is added to it), sandbox_violation (a cell was forbidden),
    replay_env:<kind>:<name> (one per gap of the replay environment in the replay_env column:
    a module, tool function or referenced file the replay lacked — not the trajectory's fault, so
    neither code_failed, observation_mismatch nor low_alignment is added for it),
    recovered_error (only with routing.recovered_errors = reject: a cell failed and a later cell
    recovered, see judges.code_correctness), code_failed:<status> (replay failed),
    observation_mismatch (cells ran but the record contradicts the replay),
    wrong_answer, unverifiable (only if the policy asks), low_coherence, low_alignment,
    low_educational_value
 3. no input image / visual gain below min -> text      [no_images | low_visual_gain]
 4. otherwise                              -> twi       [visual_gain_ok]
A null score (the judge could not score) never triggers a reason by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from judges.code_correctness import recovered_failures
from routing.policy import RoutingPolicy
from schemas import sample as S

UNSUPPORTED_TOOL = "unsupported_tool"


@dataclass(frozen=True)
class Decision:
    route: str
    reasons: list[str]


def _below(score: float | None, threshold: float) -> bool:
    return score is not None and score < threshold


def decide(row: dict[str, Any], policy: RoutingPolicy) -> Decision:
    """Route one canonical row that carries replay status and the six score columns."""
    error = row.get(S.INPUT_ERROR)
    if error:
        if error.startswith(UNSUPPORTED_TOOL + ":"):
            return Decision("rejected", [error])
        detail = (row.get(S.INPUT_DETAIL) or "").strip()
        if error == UNSUPPORTED_TOOL and detail:
            return Decision("rejected", [f"{UNSUPPORTED_TOOL}:{detail.split()[0]}"])
        return Decision("rejected", [f"invalid_input:{error}"])
    score = {d: row.get(S.score_column(d)) for d in S.DIMENSIONS}
    status = row.get(S.REPLAY_STATUS)
    reasons: list[str] = []
    if row.get(S.DUPLICATE_OF):
        reasons.append(f"duplicate_of:{row[S.DUPLICATE_OF]}")
    reasons.extend(f"contaminated:{name}" for name in row.get(S.CONTAMINATED_BY) or [])
    if row.get(S.TURNS) == []:  # a prompt without a trajectory: nothing was produced to score
        return Decision("rejected", [*reasons, "no_trajectory"])
    if row.get(S.DUPLICATE_OF) and status == "not_run":  # an exact duplicate: never replayed or judged
        return Decision("rejected", reasons)
    gaps = row.get(S.REPLAY_ENV) or []
    if status == "forbidden":
        reasons.append("sandbox_violation")
    elif gaps:
        reasons.extend(S.replay_env_reason(g) for g in gaps)
    elif policy.recovered_errors == "reject" and recovered_failures(row.get(S.REPLAY) or [], row.get(S.FINAL_ANSWER)):
        reasons.append("recovered_error")
    elif _below(score["code_correctness"], policy.min_code_correctness):
        ran = status in ("ok", "no_code")
        reasons.append("observation_mismatch" if ran else f"code_failed:{status}")
    if _below(score["scientific_accuracy"], policy.min_scientific_accuracy):
        reasons.append("wrong_answer")
    if policy.reject_unverifiable and score["scientific_accuracy"] is None:
        reasons.append("unverifiable")
    if _below(score["coherence"], policy.min_coherence):
        reasons.append("low_coherence")
    if _below(score["alignment"], policy.min_alignment) and not gaps:
        reasons.append("low_alignment")
    if _below(score["educational_value"], policy.min_educational_value):
        reasons.append("low_educational_value")
    if reasons:
        return Decision("rejected", reasons)
    if not row.get(S.IMAGES):
        return Decision("text", ["no_images"])
    if score["visual_gain"] is None or score["visual_gain"] < policy.min_visual_gain:
        return Decision("text", ["low_visual_gain"])
    return Decision("twi", ["visual_gain_ok"])
