"""The README's `ray job submit` recipe, run as written against a real local head.

`ray start --head` (dashboard and job server on 127.0.0.1, 2 CPUs, the `sandbox` resource),
then the README's command line with HEAD, INPUT and OUT filled in, submitted from the repository
root so `--working-dir .` uploads the checkout. The job's driver (`twi-curate run ... --address auto`,
on the head, in the uploaded working dir) must join that head, not start a Ray of its own.

The head runs with token authentication and a fresh token of its own (RAY_AUTH_MODE=token,
RAY_AUTH_TOKEN), so the test neither reads nor writes ~/.ray/auth_token. Teardown stops only the
processes of this head: `ray start` runs in a new session, and every process of that session or
carrying this test's marker variable is terminated; `ray stop` would stop every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, suppress
from pathlib import Path

import duckdb
import pytest

from pipeline.manifest import read_manifest
from schemas import sample as S

pytestmark = pytest.mark.timeout(900)
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: `ray` and `twi-curate`
N_RECORDS = 6
MARKER = "TWI_CURATE_RAY_JOB_TEST"


def readme_recipes() -> list[str]:
    return re.findall(r"ray job submit [^`\n]*", (ROOT / "README.md").read_text())


def free_ports(n: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def head_pids(sid: int, marker: str) -> list[int]:
    """Live processes of the head started in session ``sid``, or started from it (the job's driver
    runs in a session of its own, and inherits the marker through the environment)."""
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        pid = int(p.name)
        try:
            ours = os.getsid(pid) == sid or needle in (p / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if ours and _alive(pid):
            pids.append(pid)
    return pids


def stop_head(sid: int, marker: str) -> list[int]:
    """SIGTERM, then SIGKILL, every process of this head; returns the ones still alive."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        for pid in head_pids(sid, marker):
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while head_pids(sid, marker) and time.monotonic() < deadline:
            time.sleep(0.2)
    return head_pids(sid, marker)


def get(url: str, token: str) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


@pytest.fixture
def head():
    """A real Ray head with its dashboard (job server), all on 127.0.0.1; yields (dashboard URL, env)."""
    assert (BIN / "ray").exists() and (BIN / "twi-curate").exists(), f"no `ray`/`twi-curate` in {BIN}"
    gcs, dash, client, agent = free_ports(4)
    temp_dir = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    marker = secrets.token_hex(8)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # the job's shell finds `twi-curate` on the head
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        MARKER: marker,
    })
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
           "--num-cpus", "2", "--resources", json.dumps({"sandbox": 2}), "--temp-dir", temp_dir,
           "--disable-usage-stats"]
    start = subprocess.Popen(cmd, env=env, cwd=temp_dir, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sid = start.pid  # the session of `ray start` and of every daemon it leaves behind
    try:
        output, _ = start.communicate(timeout=180)
        assert start.returncode == 0, output[-4000:]
        url = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + 120
        while (status := get(f"{url}/api/version", env["RAY_AUTH_TOKEN"]))[0] != 200:
            assert time.monotonic() < deadline, f"dashboard at {url} never answered: {status}"
            time.sleep(0.5)
        yield url, env
    finally:
        if start.poll() is None:
            start.kill()
        left = stop_head(sid, marker)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"processes of the test's Ray head survived teardown: {left}"


@pytest.fixture
def corpus(cache_root):
    from pipeline.cli import DEFAULT_N, cache_dir

    full = cache_dir() / f"sample-corpus-n{DEFAULT_N}-s0" / "corpus.jsonl"
    subset = full.with_name(f"first{N_RECORDS}.jsonl")  # beside the images the records point to
    subset.write_text("".join(full.read_text().splitlines(keepends=True)[:N_RECORDS]))
    return subset


def test_readme_recipes_join_the_cluster():
    recipes = readme_recipes()
    assert len(recipes) >= 2, recipes  # "On a cluster" and "Scheduled runs"
    for r in recipes:
        argv = shlex.split(r)
        assert argv[argv.index("--") + 1:][:2] == ["twi-curate", "run"], r
        # without it the driver starts a Ray of its own on the head instead of using the cluster
        assert argv[-2:] == ["--address", "auto"], r


def test_readme_ray_job_submit_recipe_on_a_local_head(head, corpus, tmp_path):
    url, env = head
    out = tmp_path / "out"
    argv = shlex.split(readme_recipes()[-1])  # the Scheduled-runs block
    argv[argv.index("--address") + 1] = url  # http://HEAD:8265
    run = argv.index("--") + 1
    assert argv[run:run + 2] == ["twi-curate", "run"] and argv[run + 3] == "--out", argv
    argv[run + 2], argv[run + 4] = str(corpus), str(out)
    argv[0] = str(BIN / "ray")

    t0 = time.monotonic()
    sub = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=780)
    elapsed = time.monotonic() - t0
    log = sub.stdout + sub.stderr
    assert sub.returncode == 0, log[-6000:]
    job_id = re.search(r"Job '(raysubmit_\w+)' submitted successfully", log).group(1)
    code, body = get(f"{url}/api/jobs/{job_id}", env["RAY_AUTH_TOKEN"])  # what `ray job status` reads
    assert code == 200 and json.loads(body)["status"] == "SUCCEEDED", body
    # the job's output is the CLI's own summary, streamed back to the submitter
    assert f"conservation: ok ({N_RECORDS} routed = {N_RECORDS} input records)" in log, log[-6000:]

    # the driver joined this head: its nodes carry the head's `sandbox` resource, all on loopback
    code, body = get(f"{url}/api/v0/nodes", env["RAY_AUTH_TOKEN"])
    assert code == 200, body
    nodes = json.loads(body)["data"]["result"]["result"]
    assert {n["node_ip"] for n in nodes} == {"127.0.0.1"} and len(nodes) == 1, nodes
    m = read_manifest(out)
    assert m["resources"]["replay_resources"] == {"sandbox": m["resources"]["replay_cpus_per_actor"]}
    assert set(m["placement"]["replay"]) == {nodes[0]["node_id"]}, (m["placement"], nodes)

    assert m["conservation"]["ok"] and m["input_records"] == N_RECORDS, m["conservation"]
    ids = [r[0] for r in duckdb.connect().execute(
        f"SELECT {S.SAMPLE_ID} FROM read_parquet('{out}/shards/**/*.parquet', hive_partitioning = true)"
    ).fetchall()]
    labels = corpus.with_name("labels.jsonl").read_text().splitlines()[:N_RECORDS]  # in corpus order
    assert len(ids) == len(set(ids)) == N_RECORDS and set(ids) == {json.loads(x)[S.SAMPLE_ID] for x in labels}, ids
    print(f"ray job submit took {elapsed:.1f} s")
