"""LLM/VLM judges against a real OpenAI-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import time

import numpy as np
import pytest
from PIL import Image

from judges.llm import (
    LLM_DIMENSIONS,
    JudgeEndpointError,
    LLMJudgeClient,
    LLMJudgeSettings,
    MalformedResponse,
    OffScaleResponse,
    ResponseCache,
    combine,
    judge_rows,
    parse_verdict,
    probe_endpoint,
)
from pipeline.config import ConfigError, RunConfig, with_llm_judge
from schemas import sample as S
from tests.images import png
from tests.openai_server import FakeOpenAI, always, sequence

pytestmark = pytest.mark.timeout(300)


def settings(url: str, **kw) -> LLMJudgeSettings:
    base = {"endpoint": url, "model": "judge-7b", "backoff_base_s": 0.01, "backoff_max_s": 0.05,
            "timeout_s": 5.0, "dimensions": ["coherence"], "max_retries": 4}
    return LLMJudgeSettings(**{**base, **kw})


def sample_row(i: int = 0, metric: float = 0.4) -> dict:
    row = S.empty_row()
    img = png(np.random.default_rng(i).integers(0, 255, (1200, 1600, 3), dtype=np.uint8))
    row.update({
        S.SAMPLE_ID: f"s{i}", S.DISCIPLINE: "physics", S.QUESTION: f"Question {i}?", S.GROUND_TRUTH: "3",
        S.IMAGES: [S.image_record("in.png", img, 1600, 1200)],
        S.TURNS: [{S.TURN_REASONING: "Zoom in.", S.TURN_CODE: "print(3)", S.TURN_OBS_TEXT: "3",
                   S.TURN_OBS_IMAGES: []},
                  {S.TURN_REASONING: "It reads 3.", S.TURN_CODE: None, S.TURN_OBS_TEXT: None,
                   S.TURN_OBS_IMAGES: []}],
        S.REPLAY: [{S.CELL_INDEX: 0, S.CELL_TURN: 0, S.CELL_STATUS: "ok", S.CELL_STDOUT: "3\n", S.CELL_ERROR: "",
                    S.CELL_DURATION_MS: 1.0, S.CELL_IMAGES: [S.image_record("z.png", png(np.zeros((50, 50), np.uint8)), 50, 50)],
                    S.CELL_FIDELITY: 1.0}],
        S.FINAL_ANSWER: "3",
    })
    for d in S.DIMENSIONS:
        row[S.score_column(d)] = row[S.metric_score_column(d)] = metric
        row[S.explanation_column(d)] = "[metric] m"
    return row


def run_rows(rows, st, cache_dir):
    async def go():
        client = LLMJudgeClient(st, ResponseCache(cache_dir))
        try:
            return await judge_rows(rows, client, f"llm/{st.model}")
        finally:
            await client.close()

    return asyncio.run(go())


def test_retries_recover_from_429_500_drop_and_malformed(tmp_path):
    script = sequence(("status", 429), ("status", 500), ("drop",), ("malformed",), then=("ok", 0.9))
    with FakeOpenAI(script) as server:
        row = sample_row()
        counters = run_rows([row], settings(server.base_url), tmp_path)
    assert server.requests == 5
    assert row[S.llm_status_column("coherence")] == "ok"
    assert row[S.llm_score_column("coherence")] == 0.9 and row[S.score_column("coherence")] == 0.9
    assert counters["coherence"]["retries"] == 4 and counters["coherence"]["errors"] == 0
    assert counters["coherence"]["prompt_tokens"] > 0


def test_timeouts_are_retried(tmp_path):
    with FakeOpenAI(sequence(("slow", 2.0), then=("ok", 0.7))) as server:
        row = sample_row()
        run_rows([row], settings(server.base_url, timeout_s=0.5), tmp_path)
    assert row[S.llm_status_column("coherence")] == "ok" and server.requests == 2


def test_after_the_last_retry_the_metric_score_is_kept(tmp_path):
    with FakeOpenAI(always(("status", 500))) as server:
        row = sample_row(metric=0.4)
        counters = run_rows([row], settings(server.base_url, max_retries=2), tmp_path)
    assert server.requests == 3
    assert row[S.llm_status_column("coherence")] == "judge_error:http_500"
    assert row[S.llm_score_column("coherence")] is None
    assert row[S.score_column("coherence")] == 0.4 and "metric fallback" in row[S.explanation_column("coherence")]
    assert counters["coherence"]["errors"] == 1


def test_client_errors_are_not_retried(tmp_path):
    with FakeOpenAI(always(("status", 400))) as server:
        row = sample_row()
        run_rows([row], settings(server.base_url), tmp_path)
    assert server.requests == 1 and row[S.llm_status_column("coherence")] == "judge_error:http_400"


def test_concurrency_is_bounded_per_actor(tmp_path):
    with FakeOpenAI(latency_s=0.15) as server:
        rows = [sample_row(i) for i in range(12)]
        run_rows(rows, settings(server.base_url, per_actor_concurrency=3), tmp_path)
    assert server.requests == 12
    assert 2 <= server.max_inflight <= 3


def test_second_run_is_served_entirely_from_cache(tmp_path):
    with FakeOpenAI() as server:
        st = settings(server.base_url, dimensions=["coherence", "educational_value"])
        first = [sample_row(i) for i in range(4)]
        run_rows(first, st, tmp_path)
        assert server.requests == 8
        again = [sample_row(i) for i in range(4)]
        counters = run_rows(again, st, tmp_path)
        assert server.requests == 8  # zero new requests
    assert {r[S.llm_status_column("coherence")] for r in again} == {"cached"}
    assert counters["coherence"]["cache_hits"] == 4
    assert [r[S.score_column("coherence")] for r in again] == [r[S.score_column("coherence")] for r in first]


def test_alignment_sends_images_within_the_pixel_budget(tmp_path):
    with FakeOpenAI() as server:
        row = sample_row()
        run_rows([row], settings(server.base_url, dimensions=["alignment"], image_max_pixels=200_000), tmp_path)
        content = server.bodies[0]["messages"][1]["content"]
    urls = [p["image_url"]["url"] for p in content if p["type"] == "image_url"]
    assert len(urls) == 2  # the input image and the replayed image
    assert all(u.startswith("data:image/jpeg;base64,") for u in urls)
    with Image.open(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1]))) as im:
        assert im.size[0] * im.size[1] <= 200_000 and im.size[0] > im.size[1]


def test_scientific_accuracy_never_rescues_a_verified_wrong_answer():
    assert combine("scientific_accuracy", 0.0, 0.9) == 0.0
    assert combine("scientific_accuracy", None, 0.9) == 0.9
    assert combine("coherence", 0.2, 0.9) == 0.9
    assert combine("coherence", 0.2, None) == 0.2


@pytest.mark.parametrize(
    ("content", "ok"),
    [
        ('{"score": 0.5, "rationale": "fine"}', True),
        ('```json\n{"score": 1, "rationale": "x"}\n```', True),
        ('{"score": 1.5, "rationale": "x"}', False),
        ('{"rationale": "no score"}', False),
        ("I think it is good", False),
        ("", False),
    ],
)
def test_verdicts_are_validated(content, ok):
    if ok:
        assert 0 <= parse_verdict(content).score <= 1
    else:
        with pytest.raises(MalformedResponse):
            parse_verdict(content)


def test_judge_settings_are_validated_up_front():
    with pytest.raises(ConfigError, match="both an endpoint and a model"):
        with_llm_judge(RunConfig(), endpoint="http://127.0.0.1:1/v1")
    with pytest.raises(ConfigError, match="http"):
        with_llm_judge(RunConfig(), endpoint="127.0.0.1:1", model="m")
    with pytest.raises(ValueError, match="no LLM judge"):
        LLMJudgeSettings(dimensions=["visual_gain"])
    cfg = with_llm_judge(RunConfig(), endpoint="http://127.0.0.1:1/v1", model="m")
    assert cfg.judges.llm.enabled and cfg.config_hash() != RunConfig().config_hash()


def test_pipeline_completes_under_injected_faults_and_rerun_costs_nothing(ray_local, cache_root, tmp_path):
    """Real Ray, real sandbox, real HTTP: faults on a fixed share of requests, all recovered by retries."""
    from pipeline.cli import DEFAULT_N, cache_dir
    from pipeline.manifest import read_manifest
    from pipeline.run import run_pipeline
    from pipeline.tools.shards import connect

    corpus = cache_dir() / f"sample-corpus-n{DEFAULT_N}-s0" / "corpus.jsonl"
    # every distinct request fails on its first two attempts (429, 503, dropped connection or
    # malformed JSON, chosen by its content) and succeeds on the third: deterministic whatever
    # the interleaving of concurrent requests
    faults = [("status", 429), ("status", 503), ("drop",), ("malformed",)]
    attempts: dict[str, int] = {}

    def script(i, body):
        key = json.dumps(body.get("messages"), sort_keys=True)
        n = attempts[key] = attempts.get(key, 0) + 1
        return faults[(len(key) + n) % len(faults)] if n <= 2 else ("ok", 0.75)

    with FakeOpenAI(script) as server:
        cfg = with_llm_judge(RunConfig(), endpoint=server.base_url, model="judge-7b")
        llm = cfg.judges.llm.model_copy(update={"backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_retries": 6})
        cfg = cfg.model_copy(update={"judges": cfg.judges.model_copy(update={"llm": llm})})
        out = tmp_path / "out"
        run_pipeline([corpus], out, cfg, limit=8, quiet=True)
        first_requests = server.requests
        assert first_requests == 3 * 8 * len(llm.dimensions)  # two faults then success, per prompt
        m = read_manifest(out)
        usage = m["judges"]["llm"]["usage"]
        assert set(usage) == set(llm.dimensions)
        assert sum(u["requests"] for u in usage.values()) == first_requests
        assert all(u["prompt_tokens"] > 0 for u in usage.values())
        con = connect(out)
        statuses = con.execute(
            f"SELECT {', '.join(S.llm_status_column(d) for d in llm.dimensions)} FROM samples"
        ).fetchall()
        assert len(statuses) == 8 and all(s == "ok" for row in statuses for s in row), statuses
        assert m["judges"]["agreement"]["coherence"]["n"] == 8
        assert m["conservation"]["ok"]

        # the rows are in OUT now (a plain rerun carries them over): recompute the judges
        run_pipeline([corpus], out, cfg, limit=8, quiet=True, recompute="judges")
        assert server.requests == first_requests  # the rerun is served from the cache
        statuses = connect(out).execute(f"SELECT DISTINCT {S.llm_status_column('coherence')} FROM samples").fetchall()
        assert statuses == [("cached",)]
        usage = read_manifest(out)["judges"]["llm"]["usage"]
        assert sum(u["requests"] for u in usage.values()) == 0
        assert json.loads((out / "manifest.json").read_text())["judges"]["llm"]["model"] == "judge-7b"


# --- P9: loud, cheap failure ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "normalize", "expected"),
    [
        ('{"score": 4, "rationale": "good"}', True, 0.75),  # 1-5 scale
        ('{"score": 7, "rationale": "7/10"}', True, 6 / 9),  # 1-10 scale
        ('{"score": 4, "rationale": "4 out of 10"}', True, 3 / 9),  # the scale the text names
        ('{"score": 4, "rationale": "good"}', False, None),
        ('{"score": 4.5, "rationale": "x"}', True, None),  # not an integer: no known scale
        ('{"score": -1, "rationale": "x"}', True, None),
        ('{"score": 42, "rationale": "x"}', True, None),
    ],
)
def test_off_scale_scores_are_normalised_or_rejected(content, normalize, expected):
    if expected is None:
        with pytest.raises(OffScaleResponse):
            parse_verdict(content, normalize)
    else:
        v = parse_verdict(content, normalize)
        assert v.score == pytest.approx(expected) and v.normalized_from


def test_off_scale_answers_are_not_retried_and_normalised_ones_are_counted(tmp_path):
    with FakeOpenAI(always(("ok", 4))) as server:
        strict = [sample_row(i) for i in range(3)]
        counters = run_rows(strict, settings(server.base_url, normalize_scale=False), tmp_path / "a")
        assert server.requests == 3  # one each: a deterministic answer is not asked again
        assert {r[S.llm_status_column("coherence")] for r in strict} == {"judge_error:off_scale"}
        assert counters["coherence"]["errors_by_kind"] == {"off_scale": 3}
        assert [r[S.score_column("coherence")] for r in strict] == [0.4] * 3  # metric fallback
        lenient = [sample_row(i) for i in range(3)]
        counters = run_rows(lenient, settings(server.base_url), tmp_path / "b")
    assert [r[S.llm_score_column("coherence")] for r in lenient] == [0.75] * 3
    assert counters["coherence"]["normalized"] == 3 and counters["coherence"]["ok"] == 3


def test_failures_in_a_row_stop_all_requests(tmp_path):
    """Probation: no more than stop_after_failures judgements are sent before one succeeds."""
    with FakeOpenAI(always(("status", 500))) as server:
        rows = [sample_row(i) for i in range(12)]
        st = settings(server.base_url, max_retries=1, stop_after_failures=5, per_actor_concurrency=8)
        counters = run_rows(rows, st, tmp_path)
    assert server.requests == 5 * 2  # five judgements, each tried twice; the other seven never sent
    statuses = [r[S.llm_status_column("coherence")] for r in rows]
    assert statuses.count("judge_error:http_500") == 5 and statuses.count("judge_error:stopped:http_500") == 7
    assert counters["coherence"]["errors"] == 12


def test_circuit_breaker_opens_on_a_hanging_endpoint(tmp_path):
    with FakeOpenAI(always(("slow", 3.0))) as server:
        rows = [sample_row(i) for i in range(10)]
        st = settings(server.base_url, timeout_s=0.3, max_retries=3, circuit_breaker_after=3, per_actor_concurrency=2)
        t = time.monotonic()
        run_rows(rows, st, tmp_path)
        elapsed = time.monotonic() - t
    statuses = [r[S.llm_status_column("coherence")] for r in rows]
    assert statuses.count("judge_error:circuit_open") >= 8, statuses
    assert server.requests <= 4 and elapsed < 2.0  # three timeouts (two at once), then nothing more


def test_probe_names_the_problem(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(JudgeEndpointError, match="cannot reach the judge endpoint .* is the server running"):
        probe_endpoint(settings(f"http://127.0.0.1:{closed}/v1"))
    with FakeOpenAI(always(("status", 404))) as server, pytest.raises(JudgeEndpointError, match="no model 'judge-7b'"):
        probe_endpoint(settings(server.base_url))
    with FakeOpenAI(always(("status", 401))) as server, pytest.raises(JudgeEndpointError, match="refused the API key"):
        probe_endpoint(settings(server.base_url))
    with FakeOpenAI(always(("status", 500))) as server:  # it answered: the run's retries deal with 5xx
        probe_endpoint(settings(server.base_url))
        assert server.requests == 1


def run_cli(tmp_path, server_url: str, *extra: str, **llm) -> tuple[object, object]:
    """`twi-curate run` on the first 4 records of the bundled corpus with LLM judges at server_url."""
    import yaml
    from typer.testing import CliRunner

    from pipeline.cli import DEFAULT_N, app, cache_dir

    base = {"max_retries": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5.0,
            "stop_after_failures": 6}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"judges": {"llm": {**base, **llm}}}))
    out = tmp_path / "out"
    corpus = cache_dir() / f"sample-corpus-n{DEFAULT_N}-s0" / "corpus.jsonl"
    result = CliRunner().invoke(app, ["run", str(corpus), "--out", str(out), "--limit", "4", "--quiet",
                                      "--config", str(config), "--judge-endpoint", server_url,
                                      "--judge-model", "judge-7b", *extra])
    return result, out


def statuses_in(out) -> list[str]:
    from pipeline.tools.shards import connect

    cols = ", ".join(S.llm_status_column(d) for d in LLM_DIMENSIONS)
    return [s for row in connect(out).execute(f"SELECT {cols} FROM samples").fetchall() for s in row]


def test_cli_an_always_failing_endpoint_ends_the_run_with_exit_5(ray_local, cache_root, tmp_path):
    from pipeline.cli import EXIT_JUDGES_FAILED
    from pipeline.manifest import read_manifest

    with FakeOpenAI(always(("status", 500))) as server:
        result, out = run_cli(tmp_path, server.base_url)
    assert result.exit_code == EXIT_JUDGES_FAILED == 5, result.output
    assert server.requests == 1 + 6 * 2  # the probe, then six judgements tried twice: stopped
    f = read_manifest(out)["judges"]["llm"]["failure"]  # published: the run completed
    assert f["failed"] and f["error_rate"] == 1.0 and f["stopped_early"]
    assert f["by_kind"] == {"stopped:http_500": 16 - 6, "http_500": 6}
    assert "scripted 500" in f["example"] and "6 judgements in a row failed" in f["reason"]
    assert sorted(set(statuses_in(out))) == ["judge_error:http_500", "judge_error:stopped:http_500"]
    output = " ".join(result.output.split())
    for text in ("LLM JUDGES FAILED: 16 of 16 judgements failed (100.0%", "stopped:http_500: 10", "http_500: 6",
                 "example response: http_500:", "scripted 500", "max_error_rate 5.0%"):
        assert text in output, text


def test_cli_off_scale_answers_stop_after_a_handful(ray_local, cache_root, tmp_path):
    from pipeline.manifest import read_manifest

    with FakeOpenAI(always(("ok", 4))) as server:  # a 1-5 scale model, where the rubric asks for 0..1
        result, out = run_cli(tmp_path, server.base_url, normalize_scale=False)
    assert result.exit_code == 5, result.output
    assert server.requests <= 1 + 6  # the probe and six answers, not retried: 10 more judgements never sent
    f = read_manifest(out)["judges"]["llm"]["failure"]
    assert f["by_kind"] == {"stopped:off_scale": 10, "off_scale": 6}
    assert f["example"].startswith('off_scale: {"score": 4')
    assert "stopped:off_scale: 10" in " ".join(result.output.split())


def test_cli_known_scales_are_normalised(ray_local, cache_root, tmp_path):
    from pipeline.manifest import read_manifest

    with FakeOpenAI(always(("ok", 4))) as server:
        result, out = run_cli(tmp_path, server.base_url)
    assert result.exit_code == 0, result.output
    assert server.requests == 1 + 16
    m = read_manifest(out)["judges"]["llm"]
    assert sum(u["normalized"] for u in m["usage"].values()) == 16
    assert m["failure"]["error_rate"] == 0.0 and not m["failure"]["failed"]
    from pipeline.tools.shards import connect

    scores = connect(out).execute(f"SELECT DISTINCT {S.llm_score_column('coherence')} FROM samples").fetchall()
    assert scores == [(0.75,)]


def test_cli_a_hanging_endpoint_ends_at_the_judging_deadline(ray_local, cache_root, tmp_path):
    from pipeline.manifest import read_manifest

    # the probe is answered; every judge request then hangs longer than the client waits
    with FakeOpenAI(sequence(("ok", 0.8), then=("slow", 30.0))) as server:
        result, out = run_cli(tmp_path, server.base_url, timeout_s=1.0, max_retries=4, circuit_breaker_after=1000,
                              deadline_s=3.0)
    assert result.exit_code == 5, result.output
    m = read_manifest(out)
    f = m["judges"]["llm"]["failure"]
    assert f["stopped_early"] and "judging deadline of 3 s" in f["reason"]
    assert set(f["by_kind"]) <= {"deadline", "timeout"} and f["by_kind"]["deadline"] >= 1
    # every actor call ends within the deadline (plus one client timeout of slack), not 5 x 30 s per request
    llm = m["timings"]["stages"]["llm_judges"]
    assert llm["busy_s"] / llm["batches"] < 3.0 + 1.0 + 2.0, llm
    assert "judging deadline" in " ".join(result.output.split())


def test_cli_probe_failure_exits_2_before_any_ray_work(cache_root, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    t = time.monotonic()
    result, out = run_cli(tmp_path, f"http://127.0.0.1:{closed}/v1")
    assert result.exit_code == 2, result.output
    assert "cannot reach the judge endpoint" in " ".join(result.output.split())
    assert not out.exists() and time.monotonic() - t < 20  # run_pipeline never started
