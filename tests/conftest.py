"""Shared fixtures: one local Ray on loopback per test session, one bundled corpus build."""

from __future__ import annotations

import os

import pytest

# Keep Ray on 127.0.0.1 (see pipeline.ray_plan.init_ray) and quiet in tests.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

CORPUS_N = 48


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from pipeline.ray_plan import init_ray

    init_ray(quiet=True)
    addresses = {n["NodeManagerAddress"] for n in ray.nodes()}
    assert addresses == {"127.0.0.1"}, f"Ray left loopback: {addresses}"
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    """A TWI_CURATE_CACHE holding the default corpus, built once per session."""
    from pipeline.cli import DEFAULT_N, cache_dir
    from sample_corpus import ensure_sample_corpus

    root = tmp_path_factory.mktemp("cache")
    old = os.environ.get("TWI_CURATE_CACHE")
    os.environ["TWI_CURATE_CACHE"] = str(root)
    ensure_sample_corpus(cache_dir() / f"sample-corpus-n{DEFAULT_N}-s0", n=DEFAULT_N, seed=0)
    yield root
    if old is None:
        os.environ.pop("TWI_CURATE_CACHE", None)
    else:
        os.environ["TWI_CURATE_CACHE"] = old


@pytest.fixture(scope="session")
def curated(ray_local, cache_root, tmp_path_factory):
    """`twi-curate run` with no INPUT (the embedded default: bundled corpus, cached), once per session.

    Returns (output folder, what the command printed)."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path_factory.mktemp("run") / "curated"
    result = CliRunner().invoke(app, ["run", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out, result.output
