"""Users' own formats as plug-ins: --format module:ATTR and the twi_curate.formats entry point,
with the README's worked example (examples/my_lab_format.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

from pipeline import formats
from pipeline.config import IngestConfig
from pipeline.formats import UnknownFormatError, detect_adapter, get_adapter
from pipeline.stages.ingest import parse_payload
from schemas import sample as S
from tests.images import png

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _record(uid: str, code: str = "print(image.size)") -> dict:
    return {"uid": uid, "img": "figs/page.png", "prompt": f"What does label {uid} read?",
            "steps": [{"thought": "Look at the size first.", "python": code, "stdout": "(400, 300)\n"},
                      {"thought": "It reads 42."}],
            "final": "42", "gold": "42"}


def _corpus(root: Path, n: int = 2, image_root: Path | None = None) -> Path:
    (image_root or root).joinpath("figs").mkdir(parents=True)
    root.mkdir(parents=True, exist_ok=True)
    arr = np.tile(np.arange(400, dtype=np.uint8), (300, 1))
    (image_root or root).joinpath("figs", "page.png").write_bytes(png(arr))
    path = root / "rollouts.jsonl"
    path.write_text("".join(json.dumps(_record(f"r-{k}")) + "\n" for k in range(n)))
    return path


@pytest.fixture
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield
    formats.plugin_adapters.cache_clear()
    sys.modules.pop("my_lab_format", None)


def test_format_named_by_module_and_attribute(tmp_path, examples_on_path):
    path = _corpus(tmp_path)
    adapter = get_adapter("my_lab_format:ADAPTER")
    assert adapter.name == "my_lab"
    line = path.read_text().splitlines()[0].encode()
    row = parse_payload(line, str(path), 0, IngestConfig(), "my_lab_format:ADAPTER", forced=True)
    assert row[S.INPUT_ERROR] is None, row[S.INPUT_DETAIL]
    assert row[S.SOURCE][S.SRC_FORMAT] == "my_lab"
    assert [t[S.TURN_CODE] for t in row[S.TURNS]] == ["print(image.size)", None]
    assert row[S.GROUND_TRUTH] == "42" and row[S.IMAGES][0][S.IMG_PATH] == "figs/page.png"
    assert get_adapter("my_lab_format:MyLabRollout").name == "my_lab"  # a class is instantiated


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:ADAPTER", "cannot import module 'no_such_module_xyz'"),
        ("my_lab_format:NOPE", "has no attribute 'NOPE'"),
        ("my_lab_format:canonical_row", "is not a format adapter: it lacks name, detect, to_row"),
        ("not_a_format", "choose one of: .*thyme_sft.*my_pkg.my_module:ADAPTER"),
    ],
)
def test_bad_plugin_names_say_what_to_do(spec, message, examples_on_path):
    with pytest.raises(UnknownFormatError, match=message):
        get_adapter(spec)


def test_entry_point_plugin_takes_part_in_detection(tmp_path, monkeypatch, examples_on_path):
    """An installed package's entry point (a real dist-info folder on sys.path) is found by
    importlib.metadata: its records are detected without --format, before the built-ins."""
    site = tmp_path / "site"
    dist = site / "my_lab_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-lab-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[twi_curate.formats]\nmy_lab = my_lab_format:ADAPTER\n")
    monkeypatch.syspath_prepend(str(site))
    formats.plugin_adapters.cache_clear()
    record = _record("r-1")
    assert detect_adapter(record).name == "my_lab"
    assert "my_lab" in formats.format_names() and get_adapter("my_lab").name == "my_lab"
    path = _corpus(tmp_path / "data")
    row = parse_payload(json.dumps(record).encode(), str(path), 0, IngestConfig())
    assert row[S.SOURCE][S.SRC_FORMAT] == "my_lab" and row[S.INPUT_ERROR] is None
    (site / "clash_format.py").write_text(
        "class Clash:\n    name = 'thyme_sft'\n    def detect(self, r): return False\n"
        "    def to_row(self, r, ctx): return {}\nADAPTER = Clash()\n"
    )
    (dist / "entry_points.txt").write_text("[twi_curate.formats]\nclash = clash_format:ADAPTER\n")
    formats.plugin_adapters.cache_clear()
    with pytest.raises(UnknownFormatError, match="like a built-in format"):
        detect_adapter(record)


@pytest.mark.timeout(420)
def test_cli_run_with_a_plugin_format(tmp_path):
    """The README's worked example end to end: a real run (its own Ray) with
    --format my_lab_format:ADAPTER, the module only on PYTHONPATH; workers import it too. The
    images live elsewhere (data made on another machine): --image-root finds them."""
    path = _corpus(tmp_path / "data", n=3, image_root=tmp_path / "elsewhere")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])}
    cli = Path(sys.executable).parent / "twi-curate"
    done = subprocess.run(
        [str(cli), "run", str(path), "--out", str(out), "--format", "my_lab_format:ADAPTER", "--quiet",
         "--image-root", str(tmp_path / "elsewhere")],
        capture_output=True, text=True, timeout=400, env=env, check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = duckdb.sql(
        f"SELECT source.format AS fmt, replay_status, input_error FROM read_parquet('{out}/shards/**/*.parquet', "
        "hive_partitioning = true) ORDER BY source.index"
    ).fetchall()
    assert rows == [("my_lab", "ok", None)] * 3
