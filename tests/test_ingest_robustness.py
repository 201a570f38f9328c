"""Nothing is lost on bad input: every input record becomes exactly one row, and an unusable one is
rejected as ``invalid_input:<kind>`` with its raw text kept. Proven per kind, property-based over
random corruptions of records in every format, and in one real Ray run."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.config import IngestConfig, RunConfig
from pipeline.run import run_pipeline
from pipeline.stages.ingest import plan_read_tasks, read_task
from routing.policy import RoutingPolicy
from routing.route import decide
from schemas import sample as S
from tests.format_fixtures import label_image, write_format_fixtures
from tests.images import png

CFG = IngestConfig(raw_keep_chars=300)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust") / "corpus"
    write_format_fixtures(root)
    return root


def seed_records(root: Path) -> list[dict]:
    """One valid record of every JSON-line format of the fixtures."""
    out = []
    for name in ("native.jsonl", "thyme_sft.jsonl", "pyvision.jsonl", "openai_tools.jsonl", "pyvision_rl.json"):
        out.extend(json.loads(line) for line in (root / name).read_text().splitlines() if line.strip())
    out.extend(json.loads((root / "thyme_rl.json").read_text()))
    out.extend(json.loads((root / "sharegpt.json").read_text()))
    return out


def rows_of(path: Path, per_task: int = 3, fmt: str | None = None) -> tuple[int, list[dict]]:
    tasks = plan_read_tasks([path], per_task, format=fmt)
    return sum(t.count for t in tasks), [r for t in tasks for r in read_task(t, CFG)]


# --- each kind of bad input -----------------------------------------------------------------
def _bomb_png() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    return buf.getvalue()


def bad_cases(root: Path) -> list[tuple[str, bytes]]:
    sg = json.loads((root / "sharegpt.json").read_text())[0]
    thyme = json.loads((root / "thyme_sft.jsonl").read_text().splitlines()[0])
    pyv = json.loads((root / "pyvision.jsonl").read_text().splitlines()[0])
    native = json.loads((root / "native.jsonl").read_text().splitlines()[0])

    def line(record: dict) -> bytes:
        return json.dumps(record).encode()

    user_part = pyv["messages"][1]["content"]
    bomb_url = "data:image/png;base64," + base64.b64encode(_bomb_png()).decode()
    garbage_url = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"junk" * 50).decode()
    with_image = lambda url: {**pyv, "messages": [pyv["messages"][0], {"role": "user", "content": [  # noqa: E731
        user_part[0], {"type": "image_url", "image_url": {"url": url}}, *user_part[2:]]}, *pyv["messages"][2:]]}
    return [
        ("malformed_json", b'{"messages": [{"role": "user", "content": "hi"'),
        ("non_utf8", b'{"question": "caf\xe9 au lait", "response": "x"}'),
        ("non_utf8", json.dumps({**thyme, "question": "\ud800 lone surrogate <image>"}).encode()),
        ("not_an_object", b"[1, 2, 3]"),
        # in a file of chat records, a record no adapter recognises is read as the file's format
        ("missing_field:messages", b'{"prompt": "what?", "completion": "42"}'),
        ("missing_image", line({**sg, "images": ["images/nope.png", "images/sharegpt_zoom.png"]})),
        ("corrupt_image", line(with_image(garbage_url))),
        ("decompression_bomb", line(with_image(bomb_url))),
        ("remote_image", line(with_image("https://example.com/a.png"))),
        ("wrong_type", line({**sg, "messages": [{"role": "user", "content": 5}]})),
        ("wrong_type", line({**thyme, "question": ["not", "a", "string"]})),
        ("missing_field:question", line({k: v for k, v in native.items() if k != "question"})),
        ("empty_trajectory", line({**thyme, "response": "   "})),
        ("empty_trajectory", line({**sg, "messages": sg["messages"][:2], "images": sg["images"][:1]})),
        ("image_placeholder_mismatch", line({**sg, "images": sg["images"][:1]})),
        ("image_placeholder_mismatch", line({**thyme, "image": thyme["image"] + thyme["image"]})),
        ("unterminated_code", line({**thyme, "image": thyme["image"][:1],
                                    "response": "<think>Look.<code>\n```python\nprint(1)\n</code></think><answer>1</answer>"})),
        ("unterminated_code", line({**thyme, "image": thyme["image"][:1],
                                    "response": "<think>Look.<code>\n```python\nprint(1)\n```\n</think><answer>1</answer>"})),
        ("unsupported_turns", line({**sg, "messages": [*sg["messages"][:4], {"role": "user", "content": "thanks!"}]})),
    ]


def test_each_bad_input_is_one_rejected_row_with_its_kind(corpus):
    cases = bad_cases(corpus)
    f = corpus / "bad.jsonl"
    f.write_bytes(b"\n".join(raw for _, raw in cases) + b"\n")
    try:
        planned, rows = rows_of(f)
    finally:
        f.unlink()
    assert planned == len(rows) == len(cases)
    assert [r[S.INPUT_ERROR] for r in rows] == [kind for kind, _ in cases]
    for (kind, raw), r in zip(cases, rows, strict=True):
        assert r[S.RAW] == raw.decode("utf-8", "replace")[: CFG.raw_keep_chars], kind
        assert r[S.SAMPLE_ID].startswith("invalid-")
        d = decide(r, RoutingPolicy())
        assert (d.route, d.reasons) == ("rejected", [f"invalid_input:{kind}"])
    S.to_table(rows)


def test_records_no_adapter_recognises_are_unknown_format(tmp_path):
    f = tmp_path / "odd.jsonl"
    f.write_text('{"prompt": "what?", "completion": "42"}\n{"text": "hello"}\n')
    planned, rows = rows_of(f)
    assert planned == 2 and [r[S.INPUT_ERROR] for r in rows] == ["unknown_format"] * 2
    assert [r[S.SOURCE][S.SRC_FORMAT] for r in rows] == ["unknown"] * 2
    assert decide(rows[0], RoutingPolicy()).reasons == ["invalid_input:unknown_format"]


def test_broken_files_of_every_source_kind(tmp_path):
    good = {"question": "<image>\nq?", "response": "<think>It is 1.</think><answer>1</answer>",
            "image": [base64.b64encode(png(label_image(seed=2))).decode()]}
    (tmp_path / "truncated.json").write_text("[" + json.dumps(good) + ", " + json.dumps(good)[:40])
    (tmp_path / "junk.json").write_text("this is not json at all")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 definitely not parquet")
    (tmp_path / "empty.json").write_text("  \n")
    got = {p.name: rows_of(p) for p in sorted(tmp_path.iterdir())}
    assert [r[S.INPUT_ERROR] for r in got["truncated.json"][1]] == [None, "malformed_json"]
    assert [r[S.INPUT_ERROR] for r in got["junk.json"][1]] == ["malformed_json"]
    assert [r[S.INPUT_ERROR] for r in got["broken.parquet"][1]] == ["unreadable_file"]
    assert got["empty.json"] == (0, [])
    assert all(planned == len(rows) for planned, rows in got.values())


# --- property: conservation under random corruption ------------------------------------------
def _corrupt(record: dict, how: str, data: st.DataObject) -> bytes:
    raw = json.dumps(record).encode()
    if how == "as_is":
        return raw
    if how == "byte_flips":
        buf = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 8))):
            buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
        return bytes(buf)
    if how == "truncate":
        return raw[: data.draw(st.integers(0, len(raw) - 1))]
    if how == "wrong_type":
        key = data.draw(st.sampled_from(sorted(record)))
        return json.dumps({**record, key: data.draw(st.sampled_from([None, 3, 2.5, True, [], {}, "x", [1, {}]]))}).encode()
    if how == "missing_field":
        key = data.draw(st.sampled_from(sorted(record)))
        return json.dumps({k: v for k, v in record.items() if k != key}).encode()
    if how == "junk":
        return data.draw(st.binary(min_size=1, max_size=80))
    raise AssertionError(how)


HOW = ["as_is", "byte_flips", "truncate", "wrong_type", "missing_field", "junk"]


def _check_conservation(rows: list[dict], planned: int) -> None:
    assert len(rows) == planned
    assert [r[S.SOURCE][S.SRC_INDEX] for r in rows] == list(range(planned))
    S.to_table(rows)  # every row fits the schema
    for r in rows:
        d = decide(r, RoutingPolicy())
        assert d.route in S.ROUTES
        if d.route == "rejected":
            assert d.reasons
        if r[S.INPUT_ERROR]:
            assert d.reasons == [f"invalid_input:{r[S.INPUT_ERROR]}"]
            assert r[S.RAW] is not None


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_conservation_under_random_corruption_jsonl(corpus, data):
    seeds = seed_records(corpus)
    picks = data.draw(st.lists(st.tuples(st.integers(0, len(seeds) - 1), st.sampled_from(HOW)), min_size=1, max_size=12))
    lines = [_corrupt(seeds[i], how, data) for i, how in picks]
    payload = b"\n".join(lines) + b"\n"
    f = corpus / "fuzz.jsonl"
    f.write_bytes(payload)
    try:
        planned, rows = rows_of(f, per_task=data.draw(st.integers(1, 5)))
    finally:
        f.unlink()
    assert planned == sum(1 for line in payload.split(b"\n") if line.strip())
    _check_conservation(rows, planned)
    untouched = [i for (i, how) in picks if how == "as_is"]
    assert sum(1 for r in rows if not r[S.INPUT_ERROR]) >= len(untouched)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_conservation_under_random_corruption_json_array(corpus, data):
    seeds = seed_records(corpus)
    picks = data.draw(st.lists(st.tuples(st.integers(0, len(seeds) - 1), st.sampled_from(HOW)), min_size=0, max_size=8))
    parts = [_corrupt(seeds[i], how, data) for i, how in picks]
    payload = b"[" + b",\n".join(parts) + b"]"
    if data.draw(st.booleans()):  # and maybe break the file itself
        payload = payload[: data.draw(st.integers(1, len(payload)))]
    f = corpus / "fuzz.json"
    f.write_bytes(payload)
    try:
        planned, rows = rows_of(f, per_task=data.draw(st.integers(1, 4)), fmt=data.draw(st.sampled_from([None, "thyme_sft"])))
    finally:
        f.unlink()
    _check_conservation(rows, planned)
    if all(how == "as_is" for _, how in picks) and payload.endswith(b"]"):
        assert planned == len(picks)


@pytest.mark.timeout(600)
def test_ray_run_over_a_corrupted_file_conserves_every_record(ray_local, corpus, tmp_path):
    seeds = seed_records(corpus)
    valid = [json.dumps(seeds[0]).encode(), json.dumps(seeds[3]).encode()]  # native, openai_tools
    broken = [b"{broken", b"\xff\xfe\x00", json.dumps({**seeds[1], "response": 7}).encode(), b"[]",
              json.dumps(seeds[3]).encode()[:-30], json.dumps({"unknown": "format"}).encode()]
    lines = [valid[0], *broken[:3], valid[1], *broken[3:]]
    data_dir = tmp_path / "in"
    data_dir.mkdir()
    (data_dir / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (data_dir / "images").symlink_to(corpus / "images")
    out = tmp_path / "out"
    manifest = run_pipeline([data_dir], out, RunConfig(), quiet=True)
    assert manifest["conservation"]["ok"] and manifest["input_records"] == len(lines)
    rows = duckdb.connect().execute(
        f"SELECT {S.SOURCE}.{S.SRC_INDEX}, {S.ROUTE}, {S.ROUTE_REASONS}, {S.RAW} "
        f"FROM read_parquet('{out}/shards/**/*.parquet', hive_partitioning = true) ORDER BY 1"
    ).fetchall()
    assert [r[0] for r in rows] == list(range(len(lines)))
    for index, route, reasons, raw in rows:
        if lines[index] in broken:
            assert route == "rejected" and len(reasons) == 1 and reasons[0].startswith("invalid_input:"), reasons
            assert raw == lines[index].decode("utf-8", "replace")[:2000]
        else:
            assert not any(r.startswith("invalid_input") for r in reasons)
