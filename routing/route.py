"""Routing: scores -> (route, reasons). Pure functions, no I/O; reasons are data.

Order of decisions (default policy in routing.policy.RoutingPolicy):
 1. invalid input                         -> rejected  [invalid_input:<kind>], except a trajectory
    that calls a tool the sandbox cannot have (input_error ``unsupported_tool:<name>``, or
    ``unsupported_tool`` with the name in input_detail) -> rejected [unsupported_tool:<name>]
 2. any reject reason below                -> rejected  [all that apply]
    duplicate_of:<sample_id> and contaminated:<benchmark> (verdicts of pipeline.stages.dedup, carried
    in the duplicate_of / contaminated_by columns), no_trajectory (a prompt with an empty turn
    list, e.g. an RL input record; no score reason is added to it), sandbox_violation (a cell was forbidden),
    replay_env:<kind>:<name> (one per gap of the replay environment in the replay_env column:
    a module, tool function or referenced file the replay lacked — not the trajectory's fault, so
    neither code_failed, observation_mismatch nor low_alignment is added for it),
    recovered_error (only with routing.recovered_errors = reject: a cell failed and a later cell
    recovered, see judges.code_correctness), code_failed:<status> (replay failed),
    observation_mismatch (cells ran but the record contradicts the replay),
    wrong_answer, unverifiable (only if the policy asks), then low_<dimension> for every other
    dimension whose Dimension says ``below = rejected`` (coherence, alignment, educational value,
    and any dimension registered later: schemas.dimensions), in column order
 3. no input image / a score of a ``below = text`` dimension (visual gain) null or below its
    minimum                                -> text      [no_images | low_visual_gain]
 4. otherwise                              -> twi       [visual_gain_ok]
A null score (the judge could not score) never triggers a reason by itself, except for the text
route: a sample is TwI only when its visual gain was measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from judges.code_correctness import recovered_failures
from routing.policy import RoutingPolicy
from schemas import dimensions as D
from schemas import sample as S

UNSUPPORTED_TOOL = "unsupported_tool"
# rejecting dimensions with reasons of their own (code_failed / observation_mismatch, wrong_answer);
# every other one rejects with low_<dimension>
OWN_REASONS = ("code_correctness", "scientific_accuracy")


@dataclass(frozen=True)
class Decision:
    route: str
    reasons: list[str]


def _below(score: float | None, threshold: float) -> bool:
    return score is not None and score < threshold


def decide(row: dict[str, Any], policy: RoutingPolicy) -> Decision:
    """Route one canonical row that carries replay status and the score columns."""
    error = row.get(S.INPUT_ERROR)
    if error:
        if error.startswith(UNSUPPORTED_TOOL + ":"):
            return Decision(S.ROUTE_REJECTED, [error])
        detail = (row.get(S.INPUT_DETAIL) or "").strip()
        if error == UNSUPPORTED_TOOL and detail:
            return Decision(S.ROUTE_REJECTED, [f"{UNSUPPORTED_TOOL}:{detail.split()[0]}"])
        return Decision(S.ROUTE_REJECTED, [f"invalid_input:{error}"])
    dims = D.registered()
    score = {d.name: row.get(S.score_column(d.name)) for d in dims}
    minimum = policy.thresholds()
    status = row.get(S.REPLAY_STATUS)
    reasons: list[str] = []
    if row.get(S.DUPLICATE_OF):
        reasons.append(f"duplicate_of:{row[S.DUPLICATE_OF]}")
    reasons.extend(f"contaminated:{name}" for name in row.get(S.CONTAMINATED_BY) or [])
    if row.get(S.TURNS) == []:  # a prompt without a trajectory: nothing was produced to score
        return Decision(S.ROUTE_REJECTED, [*reasons, "no_trajectory"])
    if row.get(S.DUPLICATE_OF) and status == S.REPLAY_NOT_RUN:  # an exact duplicate: never replayed or judged
        return Decision(S.ROUTE_REJECTED, reasons)
    gaps = row.get(S.REPLAY_ENV) or []
    if status == S.STATUS_FORBIDDEN:
        reasons.append("sandbox_violation")
    elif gaps:
        reasons.extend(S.replay_env_reason(g) for g in gaps)
    elif policy.recovered_errors == "reject" and recovered_failures(row.get(S.REPLAY) or [], row.get(S.FINAL_ANSWER)):
        reasons.append("recovered_error")
    elif _below(score["code_correctness"], minimum["code_correctness"]):
        ran = status in (S.STATUS_OK, S.REPLAY_NO_CODE)
        reasons.append("observation_mismatch" if ran else f"code_failed:{status}")
    if _below(score["scientific_accuracy"], minimum["scientific_accuracy"]):
        reasons.append("wrong_answer")
    if policy.reject_unverifiable and score["scientific_accuracy"] is None:
        reasons.append("unverifiable")
    # every other rejecting dimension (coherence, alignment, educational value, and any dimension
    # added later): low_<dimension> below its minimum (alignment not when the replay lacked something)
    rejecting = [d.name for d in dims if d.below == S.ROUTE_REJECTED and d.name not in OWN_REASONS]
    for d in rejecting:
        if d == "alignment" and gaps:
            continue
        if _below(score[d], minimum[d]):
            reasons.append(f"low_{d}")
    if reasons:
        return Decision(S.ROUTE_REJECTED, reasons)
    if not row.get(S.IMAGES):
        return Decision(S.ROUTE_TEXT, ["no_images"])
    to_text = [d.name for d in dims if d.below == S.ROUTE_TEXT]
    low = [f"low_{d}" for d in to_text if score[d] is None or score[d] < minimum[d]]
    if low:
        return Decision(S.ROUTE_TEXT, low)
    return Decision(S.ROUTE_TWI, [f"{d}_ok" for d in to_text])
