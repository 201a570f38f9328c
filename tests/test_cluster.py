"""A real multi-node Ray cluster on this machine (Ray's own harness, every node on 127.0.0.1):
`twi-curate run --address` (the same code path as a production cluster) places replay actors
only on the nodes that declare the `sandbox` resource, and survives losing a worker node
mid-run with every record once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipeline.manifest import read_manifest
from schemas import sample as S

pytestmark = pytest.mark.timeout(1500)
ROOT = Path(__file__).resolve().parents[1]

DRIVER = r'''
import json, os, subprocess, sys, time
from pathlib import Path
from ray.cluster_utils import Cluster
import ray

corpus, out, config, remove = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "remove"
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})  # the head schedules, no sandbox
a = cluster.add_node(num_cpus=1, resources={"sandbox": 1})
b = cluster.add_node(num_cpus=1, resources={"sandbox": 1}) if remove else None
cluster.wait_for_nodes()
ray.init(address=cluster.address)
nodes = [{"id": n["NodeID"], "ip": n["NodeManagerAddress"], "sandbox": n["Resources"].get("sandbox", 0)}
         for n in ray.nodes() if n["Alive"]]
ray.shutdown()
cmd = [sys.executable, "-m", "pipeline.cli", "run", corpus, "--out", str(out), "--config", config,
       "--address", cluster.address, "--quiet"]
proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
removed = None
if remove:  # a real node failure once replay is under way: its raylet and workers die
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and not list(out.glob(".staging-*/units/window-*")):
        time.sleep(0.2)
    if proc.poll() is None:
        removed = b.node_id
        cluster.remove_node(b)
output, _ = proc.communicate(timeout=1200)
cluster.shutdown()
print(json.dumps({"rc": proc.returncode, "nodes": nodes, "removed": removed, "output": output[-4000:]}))
'''


def cluster_run(corpus: Path, out: Path, config: Path, remove: bool) -> dict:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    r = subprocess.run([sys.executable, "-c", DRIVER, str(corpus), str(out), str(config), "remove" if remove else "keep"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1400)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def small(cache_root, tmp_path_factory):
    from pipeline.cli import DEFAULT_N, cache_dir

    corpus = cache_dir() / f"sample-corpus-n{DEFAULT_N}-s0" / "corpus.jsonl"
    subset = corpus.with_name("first12.jsonl")
    subset.write_text("".join(corpus.read_text().splitlines(keepends=True)[:12]))
    config = tmp_path_factory.mktemp("cfg") / "windows.yaml"
    config.write_text("ingest:\n  lines_per_task: 2\n  tasks_per_window: 2\n")
    return subset, config


def sample_ids(out: Path) -> list[str]:
    return [r[0] for r in duckdb.connect().execute(
        f"SELECT {S.SAMPLE_ID} FROM read_parquet('{out}/shards/**/*.parquet', hive_partitioning = true)").fetchall()]


def test_replay_runs_only_on_sandbox_nodes_of_a_two_node_cluster(small, tmp_path):
    corpus, config = small
    out = tmp_path / "out"
    r = cluster_run(corpus, out, config, remove=False)
    assert r["rc"] == 0, r["output"]
    assert len(r["nodes"]) == 2 and {n["ip"] for n in r["nodes"]} == {"127.0.0.1"}  # loopback only
    sandbox_nodes = {n["id"] for n in r["nodes"] if n["sandbox"]}
    m = read_manifest(out)
    placed = set(m["placement"]["replay"])
    assert placed and placed <= sandbox_nodes, (placed, r["nodes"])
    assert m["resources"]["replay_resources"] == {"sandbox": m["resources"]["replay_cpus_per_actor"]}
    ids = sample_ids(out)
    assert len(ids) == len(set(ids)) == 12 and m["conservation"]["ok"]


def test_worker_node_removed_mid_run_completes_with_every_record_once(small, tmp_path):
    corpus, config = small
    out = tmp_path / "out"
    r = cluster_run(corpus, out, config, remove=True)
    assert r["removed"], "the run ended before a node could be removed"
    assert r["rc"] == 0, r["output"]
    m = read_manifest(out)
    ids = sample_ids(out)
    assert len(ids) == len(set(ids)) == 12 and m["conservation"]["ok"] and m["input_records"] == 12


LOOPBACK = r"""
import json
from pipeline.cli import local_ray_on_loopback
local_ray_on_loopback(None)  # what `twi-curate run` does first, without --address
import ray
from pipeline.ray_plan import init_ray
init_ray(quiet=True, num_cpus=1)
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address,
                  "nodes": sorted({n["NodeManagerAddress"] for n in ray.nodes()})}))
ray.shutdown()
"""


@pytest.mark.timeout(120)
def test_a_local_run_keeps_ray_on_loopback_without_the_variable_in_the_environment(monkeypatch):
    """Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported; unset there, a local Ray's
    GCS and raylet listen on the machine's network address (every test sets it, so only a fresh
    process without it shows the difference)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    proc = subprocess.run([sys.executable, "-c", LOOPBACK], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["gcs"].startswith("127.0.0.1:") and r["nodes"] == ["127.0.0.1"], r
    # a cluster run's driver must stay reachable at the machine's address: left as it is
    from pipeline.cli import local_ray_on_loopback

    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    local_ray_on_loopback("127.0.0.1:6379")
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
