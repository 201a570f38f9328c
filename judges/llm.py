"""LLM/VLM judges over any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, OpenAI).

Each enabled dimension sends one rubric prompt per sample and expects JSON
``{"score": <0..1>, "rationale": "<one or two sentences>"}`` (validated with pydantic).
Alignment is a VLM judge: it also sends the input and replayed images as base64 data URLs,
resized to ``image_max_pixels``.

Robustness: bounded concurrency per actor (a semaphore), retries with exponential backoff and
full jitter on 429, 5xx, timeouts, dropped connections and malformed JSON; after the last retry
the sample gets ``llm_status_<dim> = judge_error:<kind>`` and keeps the metric score (routing
falls back to it). Successful responses are cached on disk, keyed by model + messages (images
included) + sampling parameters, so rerunning the same job costs zero requests; errors are not
cached, so a rerun retries them.

Failing loudly and cheaply (:class:`JudgeGuard`, one state for the whole actor pool of a run):
a score off the 0..1 scale is not retried (the answer is deterministic at temperature 0): an
integer on a 1-5 or 1-10 scale is normalised (``normalize_scale``), anything else is
``judge_error:off_scale``; ``stop_after_failures`` judgements failing in a row (pool-wide; the
first ones of a run are sent no more than that many at once until one succeeds) stop all
requests (``judge_error:stopped:<kind>``); ``circuit_breaker_after`` timeouts or connection
errors in a row open the circuit for the rest of the run (``judge_error:circuit_open``); after
``deadline_s`` from the run's first request nothing more is sent (``judge_error:deadline``).
:func:`probe_endpoint` sends one tiny request before a run to fail fast on a wrong URL, key or
model.

How scores combine (``score_<dim>`` is what routing reads): when the LLM judge succeeded it
replaces the metric score, except scientific accuracy, where the final score is
min(answer verification, LLM fact check) so a verified wrong answer is never rescued.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas import sample as S

LLM_DIMENSIONS = ("coherence", "scientific_accuracy", "alignment", "educational_value")

RUBRICS = {
    "coherence": (
        "Judge REASONING COHERENCE of this visual problem-solving trajectory: each step follows from "
        "the previous ones and from what the tools returned, nothing is contradicted later, and the "
        "final answer follows from the last steps. 1.0 = fully coherent, 0.5 = minor gaps, 0.0 = "
        "incoherent or the answer does not follow."
    ),
    "scientific_accuracy": (
        "Judge SCIENTIFIC ACCURACY of the reasoning: facts, formulas, units and calculations are "
        "correct for the discipline, and the final answer agrees with the reference answer when one "
        "is given. 1.0 = all correct, 0.5 = minor slips that do not change the answer, 0.0 = wrong "
        "science or a wrong answer."
    ),
    "alignment": (
        "Judge MULTIMODAL ALIGNMENT: the images are the task's input images followed by the images "
        "the code produced, in order. The text must describe only what the images and printed "
        "outputs actually show (no invented readings, counts or labels). 1.0 = every visual claim "
        "is supported, 0.0 = the text describes things the images do not show."
    ),
    "educational_value": (
        "Judge EDUCATIONAL VALUE as training data for a scientific vision-language model: a clear, "
        "worked, well-motivated use of image operations (crop, zoom, enhance, measure) that teaches "
        "how to solve this kind of problem. 1.0 = exemplary, 0.5 = acceptable, 0.0 = useless."
    ),
}
SYSTEM = (
    "You are a strict data-quality judge for scientific multimodal training data. Answer with one "
    'JSON object only: {"score": <number between 0 and 1>, "rationale": "<at most two sentences>"}.'
)


class LLMJudgeSettings(BaseModel):
    """Where and how to call the judge model. Disabled unless endpoint and model are set."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str | None = Field(None, description="base URL, e.g. http://gpu-node:8000/v1 (env TWI_JUDGE_ENDPOINT)")
    model: str | None = Field(None, description="served model name (env TWI_JUDGE_MODEL)")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    dimensions: list[str] = Field(default_factory=lambda: list(LLM_DIMENSIONS))
    concurrency: int = Field(16, ge=1, description="requests the endpoint serves at once; sizes the pool")
    per_actor_concurrency: int = Field(8, ge=1, le=256)
    max_retries: int = Field(4, ge=0, le=20)
    timeout_s: float = Field(60.0, gt=0)
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(8.0, ge=0)
    max_tokens: int = Field(256, ge=16)
    temperature: float = Field(0.0, ge=0, le=2)
    image_max_pixels: int = Field(1280 * 28 * 28, ge=28 * 28)
    max_images: int = Field(4, ge=0)
    batch_size: int | None = Field(
        None, ge=1,
        description="rows per actor call; default: enough for two rounds of per_actor_concurrency requests, so "
        "that a window's rows spread over every actor of the pool",
    )
    max_error_rate: float = Field(
        0.05, ge=0, le=1,
        description="more failed judgements than this share: the run ends with exit code 5 (results still published)",
    )
    normalize_scale: bool = Field(
        True, description="map an integer score on a 1-5 or 1-10 scale to 0..1 (else judge_error:off_scale)"
    )
    stop_after_failures: int = Field(
        20, ge=1,
        description="this many judgements failing in a row (pool-wide) stop all requests; the first ones of a "
        "run are sent at most this many at once until one succeeds",
    )
    circuit_breaker_after: int = Field(
        10, ge=1, description="this many timeouts/connection errors in a row open the circuit for the rest of the run"
    )
    deadline_s: float | None = Field(
        21600.0, gt=0,
        description="seconds of judging from the run's first request (a bound for a slow endpoint; a hanging one "
        "opens the circuit breaker first); later rows are not sent (null: none)",
    )
    probe: bool = Field(True, description="send one tiny request before the run; fail fast on a bad URL, key or model")

    @field_validator("dimensions")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [d for d in v if d not in LLM_DIMENSIONS]
        if unknown:
            raise ValueError(f"no LLM judge for {unknown}; choose from {list(LLM_DIMENSIONS)}")
        return v

    def resolved(self) -> LLMJudgeSettings:
        """Fill endpoint/model from TWI_JUDGE_ENDPOINT / TWI_JUDGE_MODEL when not set."""
        return self.model_copy(
            update={
                "endpoint": self.endpoint or os.environ.get("TWI_JUDGE_ENDPOINT"),
                "model": self.model or os.environ.get("TWI_JUDGE_MODEL"),
            }
        )

    @property
    def enabled(self) -> bool:
        return bool(self.endpoint and self.model)

    def pool_size(self) -> int:
        return max(1, -(-self.concurrency // self.per_actor_concurrency))

    @model_validator(mode="after")
    def _default_batch_size(self) -> LLMJudgeSettings:
        """Rows per actor call, unless set: two rounds of ``per_actor_concurrency`` requests (a call
        sends rows x dimensions requests, ``per_actor_concurrency`` at a time, and an actor takes
        one call at a time). Much bigger batches leave the pool's other actors without rows (a
        48-row window in one 64-row batch kept 8 of 16 requests in flight); much smaller ones
        idle at every batch's tail."""
        if self.batch_size is None:
            self.batch_size = max(1, -(-2 * self.per_actor_concurrency // max(1, len(self.dimensions))))
        return self


class RubricVerdict(BaseModel):
    score: float = Field(ge=0.0, le=1.0)
    rationale: str = Field(max_length=2000)
    normalized_from: str | None = None  # e.g. "4 on 1-5" when the model answered on another scale


class MalformedResponse(ValueError):
    pass


class OffScaleResponse(MalformedResponse):
    """Well-formed JSON whose score is outside 0..1 (and not on a known scale): not retried."""


KNOWN_SCALES = ((1, 5), (1, 10))


def normalise_score(score: float, content: str) -> tuple[float, str] | None:
    """An integer score off the 0..1 scale -> (score on 0..1, "S on LO-HI"), or None.

    The scale is the one the text names ("4/10", "4 out of 10"), else the smallest known scale
    holding the score (2-5: 1-5, 6-10: 1-10). 0 and 1 are always read as on 0..1."""
    if score != score or score != int(score) or score <= 1:
        return None
    s = int(score)
    named = re.search(rf"(?<![\d.]){s}\s*(?:/|out of)\s*(5|10)\b", content)
    scales = [(1, int(named.group(1)))] if named else list(KNOWN_SCALES)
    for lo, hi in scales:
        if lo < s <= hi:
            return (s - lo) / (hi - lo), f"{s} on {lo}-{hi}"
    return None


def parse_verdict(content: str | None, normalize_scale: bool = False) -> RubricVerdict:
    """The model's message -> validated verdict (tolerates ```json fences and surrounding text).

    A numeric score outside 0..1 raises :class:`OffScaleResponse`, unless ``normalize_scale`` and
    :func:`normalise_score` knows its scale (the verdict then says ``normalized_from``)."""
    if not content:
        raise MalformedResponse("empty response")
    m = re.search(r"\{.*\}", content, re.S)
    if not m:
        raise MalformedResponse(f"no JSON object in {content[:80]!r}")
    try:
        data = json.loads(m.group())
    except json.JSONDecodeError as exc:
        raise MalformedResponse(str(exc)[:200]) from exc
    score = data.get("score") if isinstance(data, dict) else None
    normalized_from = None
    if isinstance(score, int | float) and not isinstance(score, bool) and not 0 <= score <= 1:
        mapped = normalise_score(score, content) if normalize_scale else None
        if mapped is None:
            raise OffScaleResponse(f"score {score} is outside 0..1")
        data = {**data, "score": mapped[0]}
        normalized_from = mapped[1]
    try:
        verdict = RubricVerdict.model_validate(data)
    except ValidationError as exc:
        raise MalformedResponse(str(exc)[:200]) from exc
    verdict.normalized_from = normalized_from
    return verdict


# --- prompts ---------------------------------------------------------------------------------
def _trajectory_text(row: dict[str, Any], with_truth: bool) -> str:
    parts = [f"Discipline: {row.get(S.DISCIPLINE)}", f"Question: {row.get(S.QUESTION) or ''}"]
    if with_truth and row.get(S.GROUND_TRUTH):
        parts.append(f"Reference answer: {row[S.GROUND_TRUTH]}")
    cells = {c[S.CELL_TURN]: c for c in row.get(S.REPLAY) or []}
    for i, t in enumerate(row.get(S.TURNS) or []):
        parts.append(f"[Step {i + 1}] {t[S.TURN_REASONING] or ''}")
        if t[S.TURN_CODE]:
            parts.append(f"[Code {i + 1}]\n{t[S.TURN_CODE][:3000]}")
            cell = cells.get(i)
            if cell is not None:
                out = (cell[S.CELL_STDOUT] or "") + (f"\n{cell[S.CELL_ERROR]}" if cell[S.CELL_ERROR] else "")
                n_img = len(cell[S.CELL_IMAGES] or [])
                parts.append(f"[Output {i + 1}, status {cell[S.CELL_STATUS]}, {n_img} image(s)]\n{out[:2000]}")
    parts.append(f"Final answer: {row.get(S.FINAL_ANSWER) or ''}")
    return "\n".join(parts)


def _data_url(data: bytes, max_pixels: int) -> str:
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        w, h = im.size
        if w * h > max_pixels:
            s = (max_pixels / (w * h)) ** 0.5
            im = im.resize((max(1, int(w * s)), max(1, int(h * s))), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def build_messages(row: dict[str, Any], dimension: str, settings: LLMJudgeSettings) -> list[dict[str, Any]]:
    text = f"{RUBRICS[dimension]}\n\n{_trajectory_text(row, with_truth=dimension == 'scientific_accuracy')}"
    if dimension != "alignment" or settings.max_images == 0:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    images = [i[S.IMG_BYTES] for i in row.get(S.IMAGES) or []]
    images += [i[S.IMG_BYTES] for c in row.get(S.REPLAY) or [] for i in c[S.CELL_IMAGES] or []]
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    content += [
        {"type": "image_url", "image_url": {"url": _data_url(b, settings.image_max_pixels)}}
        for b in images[: settings.max_images]
    ]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]


# --- cache -----------------------------------------------------------------------------------
class ResponseCache:
    """One small JSON file per successful response under ``root``, written atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(model: str, messages: list[dict[str, Any]], settings: LLMJudgeSettings) -> str:
        blob = json.dumps(
            {"model": model, "messages": messages, "max_tokens": settings.max_tokens,
             "temperature": settings.temperature},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value))
        tmp.replace(path)


# --- probing the endpoint --------------------------------------------------------------------
PROBE_TIMEOUT_S = 20.0


class JudgeEndpointError(RuntimeError):
    """The judge endpoint cannot be used (unreachable, key refused, no such model); says what to do."""


def _api_key(settings: LLMJudgeSettings) -> str:
    return os.environ.get(settings.api_key_env) or "not-needed"


def probe_endpoint(settings: LLMJudgeSettings, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Send one tiny chat request before any Ray work; raise :class:`JudgeEndpointError` when the
    endpoint is unreachable or silent, refuses the key (401/403) or has no such model (404).
    Any other answer (200, 429, 5xx, 400) passes: the run's retries and error budget handle it."""
    import openai

    url, skip = settings.endpoint, "(or skip this check with judges.llm.probe: false)"
    client = openai.OpenAI(base_url=url, api_key=_api_key(settings), max_retries=0, timeout=timeout_s)
    try:
        client.chat.completions.create(
            model=settings.model,
            messages=[{"role": "user", "content": 'Reply with {"score": 1, "rationale": "ok"}'}],
            max_tokens=16,
            temperature=0,
        )
    except openai.APITimeoutError as exc:
        raise JudgeEndpointError(
            f"the judge endpoint {url} did not answer a one-line test request within {timeout_s:g} s: is the "
            f"server up and not overloaded, and is the URL right (it usually ends in /v1)? {skip}"
        ) from exc
    except openai.APIConnectionError as exc:
        cause = exc.__cause__ or exc
        raise JudgeEndpointError(
            f"cannot reach the judge endpoint {url} ({type(cause).__name__}: {cause}): is the server running "
            f"and is the URL right (it usually ends in /v1)? Fix --judge-endpoint / judges.llm.endpoint "
            f"(or TWI_JUDGE_ENDPOINT), or run without LLM judges {skip}"
        ) from exc
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        raise JudgeEndpointError(
            f"the judge endpoint {url} refused the API key (HTTP {exc.status_code}): put a valid key in "
            f"${settings.api_key_env} (judges.llm.api_key_env names the variable)"
        ) from exc
    except openai.NotFoundError as exc:
        served = ""
        try:
            names = [m.id for m in client.models.list()]
            served = f"; it serves: {', '.join(names[:20])}" if names else ""
        except openai.OpenAIError:
            pass
        raise JudgeEndpointError(
            f"the judge endpoint {url} has no model {settings.model!r} (HTTP 404{served}): fix --judge-model / "
            "judges.llm.model, or the URL if it is not the OpenAI API root (it usually ends in /v1)"
        ) from exc
    except openai.APIStatusError:
        pass  # it answered: rate limits and server errors are the run's to retry and count
    finally:
        client.close()


# --- the run-wide guard ----------------------------------------------------------------------
TRANSPORT_ERRORS = ("timeout", "connection")
EXAMPLE_CHARS = 300


def guard_limits(settings: LLMJudgeSettings) -> dict[str, Any]:
    """The :class:`JudgeGuard` arguments of these settings."""
    longest = (settings.max_retries + 1) * (settings.timeout_s + settings.backoff_max_s)
    return {"stop_after_failures": settings.stop_after_failures,
            "circuit_breaker_after": settings.circuit_breaker_after,
            "deadline_s": settings.deadline_s, "probation_s": longest + 10.0}


class JudgeGuard:
    """The LLM judges' run-wide state: one object for every actor of the pool and every window of a
    run (held by the run's StageMetrics actor, pipeline.metrics; a lone client holds its own).

    - probation: until one judgement succeeds, at most ``stop_after_failures`` are sent; the
      others wait for their outcome (at most ``probation_s``), so a systematically failing
      endpoint costs that many judgements, not the pool's whole concurrency over again;
    - ``stop_after_failures`` judgements failing in a row -> stop: status ``stopped:<kind>``
      (the most frequent kind among them);
    - ``circuit_breaker_after`` requests in a row timing out or not connecting -> ``circuit_open``;
    - ``deadline_s`` after the first request -> ``deadline``.
    A stop is for the rest of the run. Times are the callers' ``time.time()``."""

    def __init__(self, stop_after_failures: int = 20, circuit_breaker_after: int = 10,
                 deadline_s: float | None = 21600.0, probation_s: float = 600.0):
        self.stop_after = stop_after_failures
        self.circuit_after = circuit_breaker_after
        self.deadline_s = deadline_s
        self.probation_s = probation_s
        self.first_request_at: float | None = None
        self.admitted = self.settled = self.succeeded = 0
        self.failed_in_a_row = 0
        self.kinds_in_a_row: Counter[str] = Counter()
        self.transport_in_a_row = 0
        self.stop: str | None = None
        self.reason: str | None = None
        self.example: str | None = None

    def deadline_at(self) -> float | None:
        if self.deadline_s is None or self.first_request_at is None:
            return None
        return self.first_request_at + self.deadline_s

    def _halt(self, status: str, reason: str) -> None:
        if self.stop is None:
            self.stop, self.reason = status, reason

    def _halt_deadline(self) -> None:
        self._halt("deadline", f"the judging deadline of {self.deadline_s:g} s from the first request passed "
                   "(judges.llm.deadline_s): requests still waiting were cut short, the remaining rows not sent")

    def waiting(self, now: float) -> bool:
        """True while a new judgement has to wait for the first ones' outcome."""
        return (self.stop is None and self.succeeded == 0 and self.admitted >= self.stop_after
                and self.first_request_at is not None and now - self.first_request_at < self.probation_s)

    def admit(self, now: float) -> tuple[str, float | None]:
        """Before a judgement's first request: ("go" | "wait" | a stop status, the deadline)."""
        if self.first_request_at is None:
            self.first_request_at = now
        deadline = self.deadline_at()
        if deadline is not None and now >= deadline:
            self._halt_deadline()
        if self.stop is not None:
            return self.stop, deadline
        if self.waiting(now):
            return "wait", deadline
        self.admitted += 1
        return "go", deadline

    def report(self, kind: str | None, final: bool, example: str | None = None) -> str | None:
        """After each request: ``kind`` None for a usable answer, else its error kind; ``final``
        when the judgement ends with it ("deadline": a client saw the deadline pass). -> the stop
        status, if any."""
        if kind == "deadline":
            self._halt_deadline()
            return self.stop
        if kind in TRANSPORT_ERRORS:
            self.transport_in_a_row += 1
            if self.transport_in_a_row >= self.circuit_after:
                self._halt("circuit_open", f"{self.transport_in_a_row} requests in a row timed out or could not "
                           "connect (judges.llm.circuit_breaker_after): circuit opened for the rest of the run")
        else:
            self.transport_in_a_row = 0  # the server answered
        if kind is not None and self.example is None:
            self.example = f"{kind}: {example or ''}"[:EXAMPLE_CHARS]
        if not final:
            return self.stop
        self.settled += 1
        if kind is None:
            self.succeeded += 1
            self.failed_in_a_row = 0
            self.kinds_in_a_row.clear()
            return self.stop
        self.failed_in_a_row += 1
        self.kinds_in_a_row[kind] += 1
        if self.failed_in_a_row >= self.stop_after:
            top = self.kinds_in_a_row.most_common(1)[0][0]
            kinds = ", ".join(f"{k} {n}" for k, n in self.kinds_in_a_row.most_common())
            self._halt(f"stopped:{top}", f"{self.failed_in_a_row} judgements in a row failed ({kinds}; "
                       "judges.llm.stop_after_failures): no more requests were sent")
        return self.stop

    def summary(self) -> dict[str, Any]:
        return {"stopped": self.stop, "reason": self.reason, "example": self.example,
                "judgements_sent": self.admitted, "succeeded": self.succeeded, "settled": self.settled}


class LocalGuard:
    """A :class:`JudgeGuard` in this process (one client alone: tests, benchmarks)."""

    def __init__(self, settings: LLMJudgeSettings):
        self.guard = JudgeGuard(**guard_limits(settings))

    async def call(self, op: str, *args: Any) -> Any:
        return getattr(self.guard, op)(*args)


# --- calling -----------------------------------------------------------------------------------
def _error_kind(exc: BaseException) -> tuple[str, bool]:
    """(kind, retryable) of an exception raised by one request."""
    import openai

    if isinstance(exc, OffScaleResponse):
        return "off_scale", False  # a deterministic answer at temperature 0: asking again is waste
    if isinstance(exc, MalformedResponse):
        return "malformed", True
    if isinstance(exc, openai.RateLimitError):
        return "rate_limited", True
    if isinstance(exc, openai.APITimeoutError):
        return "timeout", True
    if isinstance(exc, openai.APIConnectionError):
        return "connection", True
    if isinstance(exc, openai.APIStatusError):
        return f"http_{exc.status_code}", exc.status_code >= 500 or exc.status_code in (408, 409)
    return type(exc).__name__, False


def _example(exc: BaseException, content: str | None) -> str:
    """What the endpoint said, for the run's failure summary."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        try:
            return exc.response.text[:EXAMPLE_CHARS]
        except Exception:  # noqa: BLE001 - a stream already closed
            return str(exc)[:EXAMPLE_CHARS]
    if content is not None:
        return content[:EXAMPLE_CHARS]
    return str(exc)[:EXAMPLE_CHARS]


def new_counters() -> dict[str, Any]:
    """Usage counters of one dimension (summed over actors by pipeline.metrics.StageMetrics)."""
    return {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cache_hits": 0, "ok": 0,
            "errors": 0, "retries": 0, "normalized": 0, "errors_by_kind": {}}


class LLMJudgeClient:
    """Async judge calls with a concurrency bound, retries, backoff with jitter, a cache, and a
    guard (:class:`JudgeGuard` behind ``guard.call``; default: one of its own)."""

    def __init__(self, settings: LLMJudgeSettings, cache: ResponseCache, rng: random.Random | None = None,
                 guard: Any = None):
        import openai

        self.settings = settings
        self.cache = cache
        self.rng = rng or random.Random()
        self.client = openai.AsyncOpenAI(
            base_url=settings.endpoint,
            api_key=_api_key(settings),
            max_retries=0,  # retries are ours: counted, jittered, and they cover malformed JSON too
            timeout=settings.timeout_s,
        )
        self.semaphore = asyncio.Semaphore(settings.per_actor_concurrency)
        self.guard = guard or LocalGuard(settings)
        self.stop: str | None = None  # the run's stop status, once known: nothing more is sent
        self.deadline_at: float | None = None
        self._probation: asyncio.Future | None = None

    # -- the guard ---------------------------------------------------------------------------
    async def _admit(self) -> str | None:
        """None: send; else the stop status this judgement ends with (nothing sent)."""
        while self.stop is None:
            status, self.deadline_at = await self.guard.call("admit", time.time())
            if status == "go":
                return None
            if status != "wait":
                self.stop = status
                break
            if self._probation is None:  # one poller per client; the others wait on it
                self._probation = asyncio.ensure_future(self._wait_probation())
            await asyncio.shield(self._probation)
        return self.stop

    async def _wait_probation(self) -> None:
        try:
            while await self.guard.call("waiting", time.time()):
                await asyncio.sleep(0.05)
        finally:
            self._probation = None

    async def _report(self, kind: str | None, final: bool, example: str | None = None) -> None:
        status = await self.guard.call("report", kind, final, example)
        if status is not None and self.stop is None:
            self.stop = status

    def _time_left(self) -> float | None:
        return None if self.deadline_at is None else self.deadline_at - time.time()

    # -- one judgement -------------------------------------------------------------------------
    async def judge(self, row: dict[str, Any], dimension: str, counters: dict[str, dict[str, Any]]):
        """-> (score | None, rationale, status) for one sample and dimension."""
        c = counters.setdefault(dimension, new_counters())
        messages = build_messages(row, dimension, self.settings)
        key = self.cache.key(self.settings.model, messages, self.settings)
        hit = self.cache.get(key)
        if hit is not None and not (hit.get("normalized_from") and not self.settings.normalize_scale):
            c["cache_hits"] += 1
            c["normalized"] += bool(hit.get("normalized_from"))
            return hit["score"], hit["rationale"], "cached"
        kind = await self._admit()
        if kind is not None:
            return self._failed(c, kind)
        for attempt in range(self.settings.max_retries + 1):
            last = attempt == self.settings.max_retries
            if attempt:
                c["retries"] += 1
                cap = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (attempt - 1))
                delay = self.rng.uniform(0, cap)  # full jitter
                left = self._time_left()
                if left is not None and left <= delay:
                    kind = "deadline"
                    break
                await asyncio.sleep(delay)
            if self.stop is not None:
                kind = self.stop
                break
            left = self._time_left()
            if left is not None and left <= 0:
                kind = self.stop = "deadline"
                break
            timeout = self.settings.timeout_s if left is None else min(self.settings.timeout_s, left)
            content = None
            try:
                async with self.semaphore:
                    if self.stop is not None:
                        kind = self.stop
                        break
                    c["requests"] += 1
                    resp = await self.client.chat.completions.create(
                        model=self.settings.model,
                        messages=messages,
                        max_tokens=self.settings.max_tokens,
                        temperature=self.settings.temperature,
                        timeout=timeout,
                    )
                if resp.usage is not None:
                    c["prompt_tokens"] += resp.usage.prompt_tokens or 0
                    c["completion_tokens"] += resp.usage.completion_tokens or 0
                content = resp.choices[0].message.content if resp.choices else None
                verdict = parse_verdict(content, self.settings.normalize_scale)
            except Exception as exc:  # noqa: BLE001 - classified below; one bad response never fails a block
                kind, retryable = _error_kind(exc)
                left = self._time_left()
                if kind == "timeout" and left is not None and left <= 0:
                    kind = self.stop = "deadline"  # cut short by the deadline, not the endpoint's fault
                    break
                await self._report(kind, final=last or not retryable, example=_example(exc, content))
                if not retryable:
                    break
                continue
            await self._report(None, final=True)
            entry = {"score": verdict.score, "rationale": verdict.rationale}
            if verdict.normalized_from:
                entry["normalized_from"] = verdict.normalized_from
                c["normalized"] += 1
            self.cache.put(key, entry)
            c["ok"] += 1
            return verdict.score, verdict.rationale, "ok"
        if kind == "deadline":
            await self._report("deadline", final=True)  # the run's state says so too (the manifest)
        return self._failed(c, kind)

    @staticmethod
    def _failed(c: dict[str, Any], kind: str) -> tuple[None, str, str]:
        c["errors"] += 1
        c["errors_by_kind"][kind] = c["errors_by_kind"].get(kind, 0) + 1
        return None, "", f"judge_error:{kind}"

    async def close(self) -> None:
        await self.client.close()


def combine(dimension: str, metric: float | None, llm: float | None) -> float | None:
    """The score routing reads (see module docstring)."""
    if llm is None:
        return metric
    if dimension == "scientific_accuracy" and metric is not None:
        return min(metric, llm)
    return llm


async def judge_rows(
    rows: list[dict[str, Any]], client: LLMJudgeClient, judge_id: str
) -> dict[str, dict[str, int]]:
    """Fill llm_score/llm_status and the combined score/why columns of every row in place."""
    counters: dict[str, dict[str, int]] = {}
    jobs, targets = [], []
    for row in rows:
        if row.get(S.INPUT_ERROR) or row.get(S.DUPLICATE_OF):  # exact duplicates: the kept copy is judged
            continue
        for d in client.settings.dimensions:
            jobs.append(client.judge(row, d, counters))
            targets.append((row, d))
    for (row, d), (score, rationale, status) in zip(targets, await asyncio.gather(*jobs), strict=True):
        metric = row.get(S.metric_score_column(d))
        row[S.llm_score_column(d)] = score
        row[S.llm_status_column(d)] = status
        row[S.score_column(d)] = combine(d, metric, score)
        if score is None:
            row[S.explanation_column(d)] = f"{row.get(S.explanation_column(d)) or ''} ({judge_id} {status}: metric fallback)"
        else:
            row[S.explanation_column(d)] = f"[{judge_id}] {rationale}"[:1000]
    return counters
