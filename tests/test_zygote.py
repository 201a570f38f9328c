"""The zygote sandbox and the layers added with it: seccomp, cgroups, IPC/UTS namespaces, masked
host directories, isolation levels and the `twi-curate sandbox` commands. Real processes only.

Most tests share one zygote (``box``) whose cgroup memory limit (300 MB) is far below its
RLIMIT_AS (2 GB), so a memory bomb that RLIMIT_AS allows is stopped by the cgroup.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.config import ReplayConfig
from pipeline.sandbox import InputImage, SandboxLimits, ZygoteSandbox
from pipeline.sandbox.levels import LAYER_LABELS, LEVELS, check_level
from pipeline.sandbox.parent import PROJECT_ROOT
from tests.attack_helpers import processes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox tests run as root")

UID = 60000 + (os.getpid() + 2500) % 5000  # apart from tests/test_sandbox.py's uid
CGROUP_MB = 300
LIMITS = SandboxLimits(cell_timeout_s=2.5, total_timeout_s=30.0, memory_mb=2048)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


IMAGE = InputImage("in.png", _png(np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))))


def _uid_processes(uid: int) -> list[int]:
    return [p.pid for p in processes() if p.uids[0] == uid]


def _no_uid_processes(uid: int, grace_s: float = 3.0) -> bool:
    deadline = time.monotonic() + grace_s
    while _uid_processes(uid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def box():
    sandbox = ZygoteSandbox(LIMITS, uid=UID, gid=UID, cgroup_memory_mb=CGROUP_MB)
    yield sandbox
    sandbox.close()


# --------------------------------------------------------------------------------------------
# the zygote
# --------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_zygote_replays_statefully_and_deterministically(box):
    cells = [
        "import numpy as np, random\nx = np.asarray(image).astype(float)\nprint(np.random.rand(2), random.random())",
        "x = x[10:30, 20:50]\nprint(x.shape, x.mean())\nfrom PIL import Image\n"
        "Image.fromarray(x.astype('uint8')).resize((60, 40)).save('zoom.png')",
        "import matplotlib.pyplot as plt\nplt.figure(figsize=(1, 1), dpi=30)\nplt.plot(x[0])\nplt.show()",
    ]
    first = box.replay(cells, [IMAGE])
    second = box.replay(cells, [IMAGE])
    assert [o.status for o in first] == ["ok"] * 3, [o.error for o in first]
    assert first[1].stdout.startswith("(20, 30) ")
    assert [o.stdout for o in first] == [o.stdout for o in second]
    assert [o.images for o in first] == [o.images for o in second]
    assert [n for n, _ in first[1].images + first[2].images] == ["cell1_0_zoom.png", "cell2_0_figure.png"]
    assert box.last_layers["pid_namespace"] and box.last_layers["seccomp"]
    assert box.level == "zygote" and box.zygote_starts == 1


@pytest.mark.timeout(60)
def test_zygote_environment_is_clean(box, monkeypatch):
    monkeypatch.setenv("TWI_ZYGOTE_SECRET", "zs3cr3t")  # set after the zygote started: never seen
    out = box.replay(["import os\nprint(sorted(os.environ), os.environ['PYTHONHASHSEED'])"], [])
    assert out[0].status == "ok", out[0].error
    assert "TWI_ZYGOTE_SECRET" not in out[0].stdout and "zs3cr3t" not in out[0].stdout
    assert out[0].stdout.rstrip().endswith("'TMPDIR'] 0")
    with open(f"/proc/{box.zygote_pid}/environ", "rb") as fh:  # the zygote itself: env -i style
        names = sorted(item.split(b"=", 1)[0].decode() for item in fh.read().split(b"\0") if item)
    assert "OPENBLAS_NUM_THREADS" in names and "PYTHONHASHSEED" in names
    assert not [n for n in names if n.startswith(("TWI_", "RAY_", "AWS_", "OPENAI", "PYTEST"))]
    assert len(os.listdir(f"/proc/{box.zygote_pid}/task")) == 1  # single-threaded before forking


@pytest.mark.timeout(60)
def test_cells_libraries_run_on_one_thread(box):
    """One sandbox per CPU: the cells' numeric libraries do not start thread pools of their own
    (OpenCV's ignores OMP_NUM_THREADS; its own variable is set)."""
    out = box.replay(["import cv2, os\nprint(cv2.getNumThreads(), os.environ['OMP_NUM_THREADS'])"], [])
    assert out[0].status == "ok", out[0].error
    assert out[0].stdout.split() == ["1", "1"]


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:  # gone meanwhile
        return []


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


@pytest.mark.timeout(60)
def test_standby_worker_waits_as_root_and_cannot_reach_the_zygote(box):
    """Between trajectories the standby init has pre-forked the next worker: it runs nothing of a
    trajectory yet, so it is root (not the sandbox uid: leftover checks by uid stay meaningful),
    has its rlimits and no_new_privs applied, and holds no descriptor of the zygote's sockets."""
    assert [o.status for o in box.replay(["x = 1"], [IMAGE])] == ["ok"]
    deadline = time.monotonic() + 5.0
    while True:  # the zygote forks the next standby right after handing one out
        # (finished inits stay the zygote's zombies until its next request: no children)
        inits = [i for i in _children(box.zygote_pid) if _children(i)]
        workers = [w for i in inits for w in _children(i)]
        if workers or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(inits) == 1 and len(workers) == 1, (inits, workers)
    worker = workers[0]

    def settled() -> tuple[dict, str]:
        with open(f"/proc/{worker}/status") as fh:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)
        with open(f"/proc/{worker}/limits") as fh:
            return status, fh.read()

    deadline = time.monotonic() + 5.0
    while True:  # just forked, it may still be applying its layers: wait until it waits
        status, limits = settled()
        if (status["NoNewPrivs"] == "1" and len(_socket_inodes(worker)) == 1) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert status["Uid"].split()[0] == "0" and status["NoNewPrivs"] == "1"
    assert status["NSpid"].split()[1:] == ["2"]  # pid 2 under its init in the standby's namespace
    assert f"{LIMITS.memory_mb * 1024 * 1024}" in limits  # RLIMIT_AS already applied
    # The init holds its end of the zygote's standby socket and its end of the worker's pair; the
    # worker holds only the other end of its pair (an end shared with the init would show here).
    init_sockets, worker_sockets = _socket_inodes(inits[0]), _socket_inodes(worker)
    assert len(init_sockets) == 2 and len(worker_sockets) == 1 and not (init_sockets & worker_sockets)
    assert not (worker_sockets & _socket_inodes(box.zygote_pid))
    assert not _uid_processes(UID)  # nothing runs as the sandbox uid between trajectories
    out = box.replay(["import os\nprint(os.getuid(), os.getpid())"], [IMAGE])  # this worker runs it
    assert out[0].status == "ok" and out[0].stdout == f"{UID} 2\n", out[0]


@pytest.mark.timeout(90)
def test_zygote_restarts_after_sigkill(box):
    cells = ["y = 6 * 7", "print(y, object())"]
    before = box.replay(cells, [])
    old_pid = box.zygote_pid
    os.kill(old_pid, signal.SIGKILL)
    time.sleep(0.2)
    after = box.replay(cells, [])
    assert [o.status for o in after] == ["ok", "ok"], [o.error for o in after]
    assert after[1].stdout == before[1].stdout  # a fresh zygote: same output, same addresses
    assert box.zygote_pid not in (None, old_pid) and box.zygote_starts == 2
    # killed in the middle of a trajectory: that one is reported killed, the next one works
    timer = threading.Timer(1.0, lambda: os.kill(box.zygote_pid, signal.SIGKILL))
    timer.start()
    out = box.replay(["import time\ntime.sleep(2)", "print('never')"], [])
    timer.join()
    assert [o.status for o in out] == ["killed", "skipped"], [o.error for o in out]
    assert _no_uid_processes(UID)
    assert [o.status for o in box.replay(cells, [])] == ["ok", "ok"]
    assert box.zygote_starts == 3


@pytest.mark.timeout(60)
def test_busy_loop_times_out_and_leaves_no_process(box):
    t0 = time.monotonic()
    out = box.replay(["print('start')", "while True:\n    pass", "print('never')"], [])
    assert [o.status for o in out] == ["ok", "timeout", "skipped"]
    assert time.monotonic() - t0 < LIMITS.cell_timeout_s + 5
    assert _no_uid_processes(UID)


@pytest.mark.timeout(60)
def test_without_pid_namespace_the_group_is_still_killed():
    uid = UID + 1
    limits = SandboxLimits(cell_timeout_s=1.5, total_timeout_s=30.0)
    with ZygoteSandbox(limits, uid=uid, gid=uid, disabled={"pid_namespace"}) as fallback:
        out = fallback.replay(
            [
                "import os\nprint(image.size, os.getuid(), os.getpid() > 2)",
                "import time\nfor _ in range(3):\n    if os.fork() == 0:\n        time.sleep(30)\n        os._exit(0)",
                "time.sleep(100)",
            ],
            [IMAGE],
        )
        assert fallback.last_layers["pid_namespace"] is False and fallback.last_layers["seccomp"] is True
    assert [o.status for o in out] == ["ok", "forbidden", "timeout"], [o.error for o in out]
    assert out[0].stdout == f"(64, 48) {uid} True\n"
    assert _no_uid_processes(uid)


# --------------------------------------------------------------------------------------------
# seccomp
# --------------------------------------------------------------------------------------------
SECCOMP_CELL = r"""
import ctypes, errno, os, socket, threading
libc = ctypes.CDLL(None, use_errno=True)
def err(fn):
    try:
        fn()
        return 'allowed'
    except OSError as exc:
        return errno.errorcode[exc.errno]
res = {}
res['inet'] = err(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
res['inet6'] = err(lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
a, b = socket.socketpair(socket.AF_UNIX)
a.sendall(b'ping')
res['unix'] = b.recv(4).decode()
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
u.close()
def call(name, *args):
    rc = getattr(libc, name)(*args)
    return 'allowed' if rc != -1 else errno.errorcode[ctypes.get_errno()]
res['unshare_user'] = call('unshare', 0x10000000)
res['unshare_net'] = call('unshare', 0x40000000)
res['clone3'] = call('syscall', 435, None, 0)
res['ptrace'] = call('ptrace', 16, 1, None, None)  # PTRACE_ATTACH to init
res['mount'] = call('mount', b'none', b'/tmp/work', b'tmpfs', 0, None)
res['bpf'] = call('syscall', 321, 0, None, 0)
res['keyctl'] = call('syscall', 250, 0, 0, 0)
res['seccomp_mode'] = [l.split()[1] for l in open('/proc/self/status') if l.startswith('Seccomp:')][0]
out = []
t = threading.Thread(target=lambda: out.append(sum(range(10))))
t.start(); t.join()
res['thread'] = out
import cv2, numpy as np
cv2.setNumThreads(2)
res['cv2'] = float(cv2.GaussianBlur(np.ones((512, 512), np.float32), (5, 5), 0).sum())
pid = os.fork()
if pid == 0:
    os._exit(7)
res['fork'] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(res, sort_keys=True))
"""


@pytest.mark.timeout(60)
def test_seccomp_refuses_network_sockets_and_namespace_escapes(box):
    out = box.replay(["import json", SECCOMP_CELL], [])
    assert out[1].status == "forbidden", out[1].error  # the policy monitor saw ctypes and sockets
    res = json.loads(out[1].stdout)
    assert res["inet"] == "EPERM" and res["inet6"] == "EPERM"
    assert res["unix"] == "ping"
    assert res["unshare_user"] == "EPERM" and res["unshare_net"] == "EPERM"
    assert res["clone3"] == "ENOSYS"  # glibc then falls back to clone: threads and fork work
    assert res["ptrace"] == "EPERM" and res["mount"] == "EPERM"
    assert res["bpf"] == "EPERM" and res["keyctl"] == "EPERM"
    assert res["seccomp_mode"] == "2"
    assert res["thread"] == [45] and res["cv2"] == 512.0 * 512.0 and res["fork"] == 7


# --------------------------------------------------------------------------------------------
# cgroups
# --------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_cgroup_memory_limit_kills_a_bomb_that_rlimit_as_allows(box):
    assert box.cgroup is not None and box.cgroup.memory_bytes == CGROUP_MB << 20
    before = box.cgroup.oom_kills()
    # 600 MB touched: well under RLIMIT_AS (2 GB), twice the cgroup's 300 MB
    out = box.replay(["import numpy as np", "a = np.ones(600 * 2**20 // 8)\nprint(a.sum())", "print(1)"], [])
    assert [o.status for o in out] == ["ok", "memory", "skipped"], [o.error for o in out]
    assert f"{CGROUP_MB} MB cgroup memory limit" in out[1].error
    assert box.cgroup.oom_kills() > before
    assert _no_uid_processes(UID)
    assert box.replay(["print('fine')"], [])[0].stdout == "fine\n"  # same zygote, next trajectory


@pytest.mark.timeout(60)
def test_pids_cgroup_bounds_a_fork_bomb(box):
    assert box.cgroup.pids_max == LIMITS.max_processes + 2  # + the zygote and its pre-forked init
    before = box.cgroup.pids_limit_hits()
    bomb = (
        "import os, time\nmade = failed = 0\n"
        "for _ in range(300):\n"
        "    try:\n        pid = os.fork()\n    except OSError:\n        failed += 1\n        break\n"  # stop at the limit: fast even on a loaded machine
        "    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
        "    made += 1\n"
        "print(made, failed > 0)"
    )
    out = box.replay([bomb, "print('after')"], [])
    assert out[0].status == "forbidden" and "os.fork" in out[0].error
    made, failed = out[0].stdout.split()
    # zygote + next pre-forked init + init + worker + children (+ at most a zombie init of an
    # earlier trajectory that the zygote reaps at its next request) <= pids.max: the cgroup
    # stopped the bomb, not RLIMIT_NPROC (which counts only the uid's worker and children: 1 + made)
    assert LIMITS.max_processes + 2 - 4 - 2 <= int(made) <= LIMITS.max_processes + 2 - 4 and failed == "True"
    assert box.cgroup.pids_limit_hits() > before
    assert out[1].stdout == "after\n"
    assert _no_uid_processes(UID)


# --------------------------------------------------------------------------------------------
# namespaces and masked directories
# --------------------------------------------------------------------------------------------
IPC_KEY = 0x7717C0DE


@pytest.mark.timeout(60)
def test_ipc_and_uts_namespaces(box):
    host_name = os.uname().nodename
    cells = [
        "import os, socket\nprint(os.uname().nodename, socket.gethostname())\n"
        "print({ns: os.readlink(f'/proc/self/ns/{ns}') for ns in ('ipc', 'uts', 'net', 'pid', 'mnt')})",
        "try:\n    socket.sethostname('pwned')\nexcept OSError as exc:\n    print(type(exc).__name__)",
        # a SysV shared-memory segment exists only in the trajectory's IPC namespace
        f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nshm = libc.shmget({IPC_KEY}, 4096, 0o1600)\n"
        "print(shm >= 0, open('/proc/sysvipc/shm').read().count('\\n') - 1)",
    ]
    out = box.replay(cells, [])
    assert out[0].status == "ok", out[0].error
    names, links = out[0].stdout.splitlines()
    assert names == "sandbox sandbox"
    inside = eval(links)  # noqa: S307 - our own cell's repr of a dict of strings
    for ns, link in inside.items():
        assert link != os.readlink(f"/proc/self/ns/{ns}"), ns
    assert out[1].stdout == "PermissionError\n"
    assert out[2].stdout == "True 1\n", out[2].error
    assert os.uname().nodename == host_name
    with open("/proc/sysvipc/shm") as fh:
        assert f"{IPC_KEY}" not in {line.split()[0] for line in fh.read().splitlines()[1:]}


@pytest.mark.timeout(60)
def test_project_home_and_root_are_masked_but_the_interpreter_works(box):
    project = str(PROJECT_ROOT)
    # a world-connectable socket of some host program in /dev/shm: hidden by an empty tmpfs
    sock_path = f"/dev/shm/twi-zygote-test-{os.getpid()}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    os.chmod(sock_path, 0o777)
    listener.listen(1)
    listener.setblocking(False)
    cells = [
        f"import os\nfor d in ({project!r}, '/root', '/home'):\n"
        "    try:\n        os.listdir(d)\n        print(d, 'listed')\n    except OSError as exc:\n"
        "        print(d, type(exc).__name__)",
        f"open({project + '/pyproject.toml'!r}).read()",
        f"open({project + '/pipeline/sandbox/runner.py'!r}).read()",
        "open('/root/.bashrc').read()",
        # the interpreter and the venv stay readable: lazy imports and package data work
        "import wave, colorsys, numpy, matplotlib\nprint(wave.__name__, os.path.isfile(numpy.__file__),\n"
        "      os.path.isdir(matplotlib.get_data_path()))",
        "print([os.listdir(d) for d in ('/dev/shm', '/run')])\nimport socket\n"
        f"socket.socket(socket.AF_UNIX).connect({sock_path!r})",
    ]
    try:
        out = box.replay(cells, [])
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
        os.unlink(sock_path)
    assert out[0].stdout == f"{project} PermissionError\n/root PermissionError\n/home PermissionError\n"
    assert all("No such file or directory" in o.error for o in out[1:4]), [o.error for o in out[1:4]]
    assert out[4].status == "ok", out[4].error
    assert out[4].stdout == "wave True True\n"
    assert out[5].stdout == "[[], []]\n" and "FileNotFoundError" in out[5].error
    assert box.last_layers["masked_host_dirs"] is True


# --------------------------------------------------------------------------------------------
# levels, `twi-curate sandbox`, refusal
# --------------------------------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_sandbox_check_cli_lists_every_layer_active():
    from pipeline.cli import app

    result = CliRunner().invoke(app, ["sandbox", "check"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for label in LAYER_LABELS.values():
        line = next((ln for ln in result.output.splitlines() if label in ln), None)
        assert line is not None and "active" in line, (label, result.output)
    assert "missing" not in result.output
    assert "reaches level strict" in result.output


@pytest.mark.timeout(90)
def test_disabled_layers_lower_the_level_and_check_says_what_is_missing(monkeypatch):
    monkeypatch.setenv("TWI_SANDBOX_DISABLE", "cgroups")
    ok, report = check_level(ReplayConfig())
    assert not ok and report.achieved == "standard"
    assert report.missing == ["cgroup_memory", "cgroup_pids"]
    assert "TWI_SANDBOX_DISABLE" in report.advice() and "--allow-weak-sandbox" in report.advice()
    ok, report = check_level(ReplayConfig(min_sandbox_level="standard"))
    assert ok
    from pipeline.cli import app

    monkeypatch.setenv("TWI_SANDBOX_DISABLE", "seccomp,cgroups")
    result = CliRunner().invoke(app, ["sandbox", "check"], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    missing = [label for label in LAYER_LABELS.values() if any(label in ln and "missing" in ln for ln in result.output.splitlines())]
    assert missing == [LAYER_LABELS[k] for k in ("seccomp", "cgroup_memory", "cgroup_pids")]
    assert "reaches level weak" in result.output
    assert LEVELS["weak"] < LEVELS["standard"] < LEVELS["strict"]


def _tiny_corpus(path: Path) -> Path:
    from sample_corpus import build_sample_corpus

    build_sample_corpus(path, n=1, seed=0)
    return path


@pytest.mark.timeout(120)
def test_run_refuses_below_the_minimum_level_unless_allowed(tmp_path, monkeypatch):
    import pipeline.run
    from pipeline.cli import app

    corpus = _tiny_corpus(tmp_path / "corpus")
    monkeypatch.setenv("TWI_SANDBOX_DISABLE", "seccomp")
    reached_ray, metrics_started = [], []

    def slow_ray(*args, **kwargs):  # Ray's start, which the check runs beside, without Ray
        reached_ray.append(True)
        time.sleep(0.2)

    monkeypatch.setattr(pipeline.run, "init_ray", slow_ray)
    monkeypatch.setattr(pipeline.run, "start_metrics", lambda: metrics_started.append(True))
    result = CliRunner().invoke(app, ["run", str(corpus), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "refusing to replay untrusted code" in result.output
    assert "seccomp" in result.output and "--allow-weak-sandbox" in result.output
    assert reached_ray == [True] and metrics_started == []  # refused before any Ray work
    assert not (tmp_path / "out" / "shards").exists()

    def no_ray(*args, **kwargs):
        reached_ray.append(True)
        raise RuntimeError("stop before Ray")

    monkeypatch.setattr(pipeline.run, "init_ray", no_ray)
    result = CliRunner().invoke(app, ["run", str(corpus), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2 and "refusing to replay untrusted code" in result.output  # a refusal wins
    reached_ray.clear()
    result = CliRunner().invoke(
        app, ["run", str(corpus), "--out", str(tmp_path / "out"), "--quiet", "--allow-weak-sandbox"]
    )
    assert reached_ray == [True] and "stop before Ray" in str(result.exception)
    assert "WARNING" in result.output and "WEAK SANDBOX" in result.output


@pytest.mark.timeout(60)
def test_sandbox_run_cli_replays_a_file_in_cells(tmp_path):
    from pipeline.cli import app, split_cells

    code = tmp_path / "code.py"
    code.write_text("x = 20\nprint(image.size)\n# %%\nx += 1\nimage.crop((0, 0, 8, 6)).save('c.png')\nprint(x)\n")
    img = tmp_path / "in.png"
    img.write_bytes(IMAGE.data)
    assert split_cells(code.read_text()) == ["x = 20\nprint(image.size)\n", "x += 1\nimage.crop((0, 0, 8, 6)).save('c.png')\nprint(x)\n"]
    assert split_cells("print(1)\n#  %%\nprint(2)") == ["print(1)\n#  %%\nprint(2)"]
    out_dir = tmp_path / "out"
    result = CliRunner().invoke(app, ["sandbox", "run", str(code), "--image", str(img), "--out", str(out_dir)])
    assert result.exit_code == 0, result.output
    assert "cell 0 ok" in result.output and "(64, 48)" in result.output
    assert "cell 1 ok" in result.output and "21" in result.output
    with Image.open(out_dir / "cell1_0_c.png") as im:
        assert im.size == (8, 6)
    code.write_text("import socket\nsocket.socket(socket.AF_INET)\n")
    result = CliRunner().invoke(app, ["sandbox", "run", str(code), "--out", str(out_dir)])
    assert result.exit_code == 1 and "forbidden" in result.output


# --------------------------------------------------------------------------------------------
# allowlist view of /, tmpfs work dir, output image check
# --------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_only_the_allowlisted_top_level_dirs_are_visible(box):
    bait_dir = Path("/var/tmp") / f"twi-zygote-allowlist-{os.getpid()}"
    bait_dir.mkdir(mode=0o755)
    try:
        bait = bait_dir / "host.png"
        bait.write_bytes(IMAGE.data)
        bait.chmod(0o644)
        cells = [
            f"import cv2\nprint(cv2.imread({str(bait)!r}) is None)",
            "import os\nprint(os.path.isfile('/etc/passwd'), os.path.isdir('/usr/lib'))",
            "seen = []\nfor d in ('/var', '/srv', '/mnt', '/opt', '/work', '/home'):\n"
            "    try:\n        seen += [os.path.join(d, n) for n in os.listdir(d)]\n"
            "    except OSError:\n        pass\nprint(seen)",
        ]
        out = box.replay(cells, [])
    finally:
        bait.unlink()
        bait_dir.rmdir()
    assert [o.status for o in out] == ["ok", "ok", "ok"], out
    assert out[0].stdout == "True\n" and out[1].stdout == "True True\n"
    assert out[2].stdout == "[]\n"


@pytest.mark.timeout(90)
def test_work_dir_is_a_size_limited_tmpfs_and_output_bombs_are_dropped():
    limits = SandboxLimits(cell_timeout_s=5.0, total_timeout_s=30.0, memory_mb=2048, work_dir_mb=16,
                           max_output_pixels=1_000_000)  # fmt: skip
    raise_child_cap = (
        "import sys\nfor m in list(sys.modules.values()):\n"
        "    if hasattr(m, 'MAX_CAPTURE_PIXELS'):\n        m.MAX_CAPTURE_PIXELS = 10**12\n"
    )
    with ZygoteSandbox(limits, uid=UID, gid=UID) as sandbox:
        first = sandbox.replay(
            [
                "open('fill.bin', 'wb').write(b'\\0' * (32 << 20))",
                "import os\nst = os.statvfs('.')\nprint(st.f_blocks * st.f_frsize <= 16 << 20, os.getcwd())",
            ],
            [IMAGE],
        )
        second = sandbox.replay(
            [
                "import os\nprint(sorted(os.listdir('.')))\nopen('ok.bin', 'wb').write(b'\\0' * (8 << 20))",
                raise_child_cap + "from PIL import Image\nImage.new('L', (2000, 1000)).save('bomb.png')\n"
                "Image.new('L', (20, 10)).save('small.png')",
            ],
            [IMAGE],
        )
    assert first[0].status == "error" and "No space left on device" in first[0].error, first[0]
    assert first[1].stdout == "True /tmp/work\n", first[1]
    assert second[0].status == "ok" and second[0].stdout == "['input_0.png', 'mnt']\n", second[0]
    assert second[1].status == "ok", second[1].error
    assert [name for name, _ in second[1].images] == ["cell1_1_small.png"]
    assert "bomb.png dropped: 2000x1000 exceeds 1000000 pixels" in second[1].stdout


def test_new_limits_are_validated():
    for field in ("work_dir_mb", "max_output_pixels"):
        with pytest.raises(ValueError, match=field):
            SandboxLimits(**{field: 0})


def _zygote_children(parent: int) -> list[int]:
    """Pids of sandbox zygotes (runner.py --zygote) whose parent is ``parent``."""
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"pipeline/sandbox/runner.py" in cmd and b"--zygote" in cmd:
            found.append(int(p))
    return found


def test_a_zygote_killed_while_it_starts_is_started_again():
    """A fault during start-up (seen in CI: a zygote SIGKILLed before its ready message made the
    restarted replay actor's creation fail) costs a second start, not the actor."""
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set() and not killed:
            for pid in _zygote_children(os.getpid()):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.002)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    box = ZygoteSandbox(uid=UID, gid=UID)
    try:
        stop.set()
        t.join(5)
        assert killed, "the zygote was never seen starting"
        assert box.zygote_pid not in killed and box.zygote_starts == 1  # the second start counts once
        out = box.replay(["print(6 * 7)"], [])
        assert [o.status for o in out] == ["ok"] and out[0].stdout == "42\n"
    finally:
        box.close()


@pytest.mark.timeout(120)
def test_the_zygote_builds_the_font_cache_itself_and_a_process_level_child_reuses_it(monkeypatch):
    """A preloading zygote imports matplotlib as root with MPLCONFIGDIR set: it writes the font
    cache into the (root-owned, read-only for the cells) directory itself, so no warm-up
    interpreter runs for it; a process-level sandbox of the same parent finds that cache, and one
    that finds none builds it before its first child."""
    from pipeline.sandbox import parent
    from pipeline.sandbox.process import ProcessSandbox

    warmed: list[str] = []
    original = parent._warm_matplotlib_cache
    monkeypatch.setattr(parent, "_warm_matplotlib_cache", lambda py, path: (warmed.append(path), original(py, path)))
    monkeypatch.setattr(parent, "_shared_mpl_dir", None)  # this test's own directory
    plot = "import matplotlib\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2]); plt.show()\nprint(matplotlib.get_cachedir())"
    with ZygoteSandbox(LIMITS, uid=UID, gid=UID, cgroup_memory_mb=CGROUP_MB) as box:
        mpl_dir = box._mpl_dir
        assert warmed == []
        assert any(n.startswith("fontlist-") for n in os.listdir(mpl_dir))  # written by the zygote
        assert os.stat(mpl_dir).st_uid == 0 and os.stat(mpl_dir).st_mode & 0o022 == 0
        (out,) = box.replay([plot], [])
        assert out.status == "ok" and out.stdout.strip() == mpl_dir and len(out.images) == 1
    with ProcessSandbox(LIMITS, uid=UID, gid=UID) as child:
        assert child._mpl_dir == mpl_dir and warmed == []  # the cache is there
    for name in os.listdir(mpl_dir):
        os.remove(os.path.join(mpl_dir, name))
    with ProcessSandbox(LIMITS, uid=UID, gid=UID) as child:
        assert warmed == [mpl_dir] and any(n.startswith("fontlist-") for n in os.listdir(mpl_dir))
        (out,) = child.replay([plot], [])
        assert out.status == "ok" and len(out.images) == 1
