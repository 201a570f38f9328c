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
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
    batch_size: int = Field(64, ge=1, description="rows per actor call; ≫ per_actor_concurrency keeps the pipe full")

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


class RubricVerdict(BaseModel):
    score: float = Field(ge=0.0, le=1.0)
    rationale: str = Field(max_length=2000)


class MalformedResponse(ValueError):
    pass


def parse_verdict(content: str | None) -> RubricVerdict:
    """The model's message -> validated verdict (tolerates ```json fences and surrounding text)."""
    if not content:
        raise MalformedResponse("empty response")
    m = re.search(r"\{.*\}", content, re.S)
    if not m:
        raise MalformedResponse(f"no JSON object in {content[:80]!r}")
    try:
        return RubricVerdict.model_validate(json.loads(m.group()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise MalformedResponse(str(exc)[:200]) from exc


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


# --- calling -----------------------------------------------------------------------------------
def _error_kind(exc: BaseException) -> tuple[str, bool]:
    """(kind, retryable) of an exception raised by one request."""
    import openai

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


class LLMJudgeClient:
    """Async judge calls with a concurrency bound, retries, backoff with jitter and a cache."""

    def __init__(self, settings: LLMJudgeSettings, cache: ResponseCache, rng: random.Random | None = None):
        import openai

        self.settings = settings
        self.cache = cache
        self.rng = rng or random.Random()
        self.client = openai.AsyncOpenAI(
            base_url=settings.endpoint,
            api_key=os.environ.get(settings.api_key_env) or "not-needed",
            max_retries=0,  # retries are ours: counted, jittered, and they cover malformed JSON too
            timeout=settings.timeout_s,
        )
        self.semaphore = asyncio.Semaphore(settings.per_actor_concurrency)

    async def judge(self, row: dict[str, Any], dimension: str, counters: dict[str, dict[str, int]]):
        """-> (score | None, rationale, status) for one sample and dimension."""
        c = counters.setdefault(dimension, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                            "cache_hits": 0, "errors": 0, "retries": 0})
        messages = build_messages(row, dimension, self.settings)
        key = self.cache.key(self.settings.model, messages, self.settings)
        hit = self.cache.get(key)
        if hit is not None:
            c["cache_hits"] += 1
            return hit["score"], hit["rationale"], "cached"
        kind = "unknown"
        for attempt in range(self.settings.max_retries + 1):
            if attempt:
                c["retries"] += 1
                cap = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (attempt - 1))
                await asyncio.sleep(self.rng.uniform(0, cap))  # full jitter
            try:
                async with self.semaphore:
                    c["requests"] += 1
                    resp = await self.client.chat.completions.create(
                        model=self.settings.model,
                        messages=messages,
                        max_tokens=self.settings.max_tokens,
                        temperature=self.settings.temperature,
                    )
                if resp.usage is not None:
                    c["prompt_tokens"] += resp.usage.prompt_tokens or 0
                    c["completion_tokens"] += resp.usage.completion_tokens or 0
                verdict = parse_verdict(resp.choices[0].message.content if resp.choices else None)
            except Exception as exc:  # noqa: BLE001 - classified below; one bad response never fails a block
                kind, retryable = _error_kind(exc)
                if not retryable:
                    break
                continue
            self.cache.put(key, {"score": verdict.score, "rationale": verdict.rationale})
            return verdict.score, verdict.rationale, "ok"
        c["errors"] += 1
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
