"""Real tests of the replay sandboxes: real child processes, real PNG/JPEG inputs.

The tests on the module's ``sandbox`` fixture run against both levels (ProcessSandbox and
ZygoteSandbox apply the same layers); tests that build their own sandbox with ``_box`` run on
the process level here and on the zygote in tests/test_zygote.py.
"""

from __future__ import annotations

import io
import os
import socket
import time

import numpy as np
import pytest
from PIL import Image

from pipeline.sandbox import (
    STDERR_MARKER,
    TRUNCATION_MARKER,
    CellOutcome,
    InputImage,
    ProcessSandbox,
    Sandbox,
    SandboxLimits,
    ZygoteSandbox,
    isolation_report,
)
from pipeline.sandbox.isolation import interpreter_dirs_under
from tests.attack_helpers import processes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the level-1 sandbox tests run as root")

# A uid of its own (no /etc/passwd entry needed) so that the process checks below cannot be
# confused by other sandboxes running as nobody on the same machine, and so that RLIMIT_NPROC
# is not shared with them. Derived from the pid so concurrent test runs do not collide either.
SANDBOX_UID = 60000 + os.getpid() % 5000


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _gradient(h: int = 48, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 4 % 256, yy * 5 % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return im.size


def _leftovers(pgid: int | None) -> list[tuple[int, int, int]]:
    """Processes still in the child's process group or running as the sandbox uid."""
    deadline = time.monotonic() + 3.0  # the kernel tears a PID namespace down asynchronously
    while True:
        left = [(p.pid, p.pgid, p.uids[0]) for p in processes() if p.pgid == pgid or p.uids[0] == SANDBOX_UID]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _statuses(outcomes: list[CellOutcome]) -> list[str]:
    return [o.status for o in outcomes]


def _box(limits: SandboxLimits) -> ProcessSandbox:
    return ProcessSandbox(limits, uid=SANDBOX_UID, gid=SANDBOX_UID)


@pytest.fixture(scope="module", params=[ProcessSandbox, ZygoteSandbox], ids=["process", "zygote"])
def sandbox(request):
    box = request.param(SandboxLimits(cell_timeout_s=15.0, total_timeout_s=40.0), uid=SANDBOX_UID, gid=SANDBOX_UID)
    yield box
    box.close()


@pytest.fixture(scope="module")
def input_images() -> list[InputImage]:
    return [
        InputImage("math-0001.png", _encode(_gradient())),
        InputImage("photo-0002.jpg", _encode(_gradient(30, 20), "JPEG")),
    ]


@pytest.fixture(autouse=True)
def _no_sandbox_processes_before():
    assert not [p for p in processes() if p.uids[0] == SANDBOX_UID], "stray sandbox processes"
    yield


# --------------------------------------------------------------------------------------------
# interface and isolation layers
# --------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_isolation_report_and_protocol(sandbox):
    report = isolation_report()
    for layer in (
        "separate_process",
        "network_namespace",
        "unprivileged_uid",
        "rlimits",
        "wall_clock_kill",
        "output_cap",
        "clean_environment",
    ):
        assert report[layer] is True, layer
    assert report["pid_namespace"] is True and report["read_only_filesystem"] is True
    assert report["seccomp"] is True and report["cgroups"] is True  # both levels apply every layer
    assert isinstance(sandbox, Sandbox)
    assert sandbox.level == ("process" if type(sandbox) is ProcessSandbox else "zygote")
    assert sandbox.replay([], []) == []
    with type(sandbox)() as default:  # drops to nobody/nogroup by default
        out = default.replay(["import os\nprint(os.getresuid(), os.getresgid())"], [])
    assert out[0].stdout == "(65534, 65534, 65534) (65534, 65534, 65534)\n"


@pytest.mark.timeout(60)
def test_child_runs_unprivileged_in_empty_namespaces(sandbox):
    cells = [
        "import os\nprint(os.getresuid(), os.getresgid(), os.getgroups())",
        # network interfaces of the cell's namespace (seccomp refuses the netlink socket that
        # socket.if_nameindex() would need)
        "print([l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]])",
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('NoNewPrivs')])",
        "print(os.getpid(), os.getppid())",
        "import resource\nprint(resource.getrlimit(resource.RLIMIT_NPROC), resource.getrlimit(resource.RLIMIT_CORE))",
        "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))",  # host processes invisible
    ]
    out = sandbox.replay(cells, [])
    assert _statuses(out) == ["ok"] * 6, [o.error for o in out]
    ids = (SANDBOX_UID,) * 3
    assert out[0].stdout == f"{ids} {ids} []\n"
    assert out[1].stdout == "['lo']\n"
    assert out[2].stdout == "['1']\n"
    assert out[3].stdout == "2 1\n"  # pid 2 of its own PID namespace, under a pid-1 init
    assert out[4].stdout == "(64, 64) (0, 0)\n"
    assert out[5].stdout == "[1, 2]\n"
    assert sandbox.last_layers["pid_namespace"] is True


# --------------------------------------------------------------------------------------------
# replay semantics
# --------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_state_and_imports_carry_across_cells(sandbox):
    cells = [
        "x = 41\nimport numpy as np\nfrom PIL import ImageOps",
        "x += 1\nprint(x, np.arange(3).sum(), ImageOps.__name__)",
        "def f(v):\n    return v * 2\n",
        "print(f(x))",
    ]
    out = sandbox.replay(cells, [])
    assert _statuses(out) == ["ok"] * 4
    assert out[1].stdout == "42 3 PIL.ImageOps\n"
    assert out[3].stdout == "84\n"
    assert all(o.error == "" and o.images == [] for o in out)


@pytest.mark.timeout(60)
def test_inputs_are_preloaded(sandbox, input_images):
    cells = [
        "print(image_paths)\n"
        "print(type(image).__name__, image.size, image.mode, image.format)\n"
        "print([im.size for im in images], [im.format for im in images])\n"
        "import os\nprint(os.getcwd() == work_dir, sorted(os.listdir(work_dir)))\n"
        "import numpy as np\nprint(int(np.asarray(image)[10, 20, 0]))",
    ]
    out = sandbox.replay(cells, input_images)
    assert out[0].status == "ok", out[0].error
    lines = out[0].stdout.splitlines()
    assert lines[0] == "['input_0.png', 'input_1.jpg']"
    assert lines[1] == "PngImageFile (64, 48) RGB PNG"
    assert lines[2] == "[(64, 48), (20, 30)] ['PNG', 'JPEG']"
    assert lines[3] == "True ['input_0.png', 'input_1.jpg', 'mnt']"  # mnt: Thyme's mapped /mnt/data
    assert lines[4] == str(20 * 4 % 256)


@pytest.mark.timeout(60)
def test_crop_resize_save_produces_one_png(sandbox, input_images):
    cells = [
        "crop = image.crop((8, 4, 40, 28)).resize((64, 48))\ncrop.save('zoom.png')\nprint('saved')",
        "import os\nos.makedirs('out/sub', exist_ok=True)\n"
        "import cv2\nimg = cv2.imread(image_paths[0])\n"
        "cv2.imwrite('out/sub/edges.jpg', cv2.Canny(img, 50, 150))\n"
        "open('notes.txt', 'w').write('not an image')",
        "print('nothing new')",
        "image.resize((10, 10)).save('zoom.png')",  # overwriting a file counts as a new output
    ]
    out = sandbox.replay(cells, input_images)
    assert _statuses(out) == ["ok"] * 4, [o.error for o in out]
    assert [name for name, _ in out[0].images] == ["cell0_0_zoom.png"]
    assert _png_size(out[0].images[0][1]) == (64, 48)
    assert [name for name, _ in out[1].images] == ["cell1_0_edges.png"]
    assert _png_size(out[1].images[0][1]) == (64, 48)
    assert out[2].images == []
    assert [name for name, _ in out[3].images] == ["cell3_0_zoom.png"]
    assert _png_size(out[3].images[0][1]) == (10, 10)


@pytest.mark.timeout(60)
def test_plt_show_and_image_show_are_captured(sandbox, input_images):
    cells = [
        "import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)\nax.imshow(image)\nplt.show()\n"
        "plt.figure(figsize=(1, 1), dpi=40)\nplt.plot([0, 1], [1, 0])\nplt.show()\n"
        "print(plt.get_fignums())",
        "image.rotate(90, expand=True).show()\nimages[1].show()",
        "import cv2\ncv2.imshow('edges', cv2.Canny(cv2.imread(image_paths[0]), 50, 150))\ncv2.waitKey(0)",
    ]
    out = sandbox.replay(cells, input_images)
    assert _statuses(out) == ["ok"] * 3, [o.error for o in out]
    assert out[0].stdout == "[]\n"  # show() closed the figures
    assert [n for n, _ in out[0].images] == ["cell0_0_figure.png", "cell0_1_figure.png"]
    assert _png_size(out[0].images[0][1]) == (100, 75)
    assert _png_size(out[0].images[1][1]) == (40, 40)
    assert [n for n, _ in out[1].images] == ["cell1_0_show.png", "cell1_1_show.png"]
    assert _png_size(out[1].images[0][1]) == (48, 64)
    assert _png_size(out[1].images[1][1]) == (20, 30)
    assert [n for n, _ in out[2].images] == ["cell2_0_edges.png"]


@pytest.mark.timeout(60)
def test_images_per_cell_are_capped(input_images):
    with _box(SandboxLimits(max_images_per_cell=3)) as box:
        out = box.replay(
            ["for k in range(5):\n    image.resize((k + 1, k + 1)).save(f'f{k}.png')"], input_images
        )
    assert out[0].status == "ok"
    assert [n for n, _ in out[0].images] == ["cell0_0_f0.png", "cell0_1_f1.png", "cell0_2_f2.png"]
    assert "not kept: more than 3 images" in out[0].stdout


@pytest.mark.timeout(60)
def test_error_cell_reports_traceback_and_later_cells_run(sandbox):
    cells = [
        "y = 1",
        "def boom():\n    return {}['missing']\nboom()",
        "print('still alive', y)",
        "def broken(:\n    pass",
        "import sys\nsys.exit(3)",
        "print('after exit', y)\nprint('warn', file=__import__('sys').stderr)",
    ]
    out = sandbox.replay(cells, [])
    assert _statuses(out) == ["ok", "error", "ok", "error", "error", "ok"]
    assert "Traceback (most recent call last)" in out[1].error
    assert 'File "<cell1>", line 3' in out[1].error and "return {}['missing']" in out[1].error
    assert out[1].error.rstrip().endswith("KeyError: 'missing'")
    assert "runner.py" not in out[1].error
    assert out[2].stdout == "still alive 1\n"
    assert "SyntaxError" in out[3].error
    assert "SystemExit: 3" in out[4].error
    assert out[5].stdout == "after exit 1\n" + STDERR_MARKER + "warn\n"


# --------------------------------------------------------------------------------------------
# limits
# --------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_busy_loop_times_out_and_leaves_no_process():
    limits = SandboxLimits(cell_timeout_s=1.5, total_timeout_s=30.0)
    with _box(limits) as box:
        t0 = time.monotonic()
        out = box.replay(["print('start')", "while True:\n    pass", "print('never')"], [])
        elapsed = time.monotonic() - t0
        pgid = box.last_pid
    assert _statuses(out) == ["ok", "timeout", "skipped"]
    assert "1.5 s wall-clock limit" in out[1].error
    assert 1400 <= out[1].duration_ms < 3000  # measured up to the kill, not the clean-up
    assert "not run" in out[2].error
    assert elapsed < 1.5 + 8.0  # start-up + the limit, not the 30 s total
    assert _leftovers(pgid) == []


@pytest.mark.timeout(60)
def test_sleep_hits_the_trajectory_limit_and_leaves_no_process():
    limits = SandboxLimits(cell_timeout_s=30.0, total_timeout_s=5.0)
    with _box(limits) as box:
        t0 = time.monotonic()
        out = box.replay(["import time", "time.sleep(100)", "print('never')"], [])
        elapsed = time.monotonic() - t0
        pgid = box.last_pid
    assert _statuses(out) == ["ok", "timeout", "skipped"]
    assert "trajectory exceeded the 5 s" in out[1].error
    assert elapsed < 5.0 + 3.0
    assert _leftovers(pgid) == []


@pytest.mark.timeout(60)
def test_memory_bombs_are_classified_as_memory(sandbox):
    cells = [
        "blob = bytearray(10**10)",
        "import numpy as np\nbig = np.ones((10**6, 10**4))",
        "import cv2\ncv2.resize(np.zeros((10, 10), np.uint8), (100000, 100000))",
        "print('survived')",
    ]
    out = sandbox.replay(cells, [])
    assert _statuses(out) == ["memory", "memory", "memory", "ok"]
    assert "MemoryError" in out[0].error
    assert "Unable to allocate" in out[1].error
    assert "Insufficient memory" in out[2].error
    assert out[3].stdout == "survived\n"


@pytest.mark.timeout(60)
def test_cpu_limit_kills_the_child():
    # RLIMIT_CPU includes the ~1 s of CPU the pre-imports take.
    with _box(SandboxLimits(cpu_s=3, cell_timeout_s=30.0)) as box:
        out = box.replay(["print('a')", "while True:\n    pass", "print('never')"], [])
        pgid = box.last_pid
    assert _statuses(out) == ["ok", "killed", "skipped"]
    assert "CPU time limit" in out[1].error
    assert _leftovers(pgid) == []


@pytest.mark.timeout(60)
def test_child_suicide_is_killed_and_rest_skipped(sandbox):
    out = sandbox.replay(["import faulthandler", "faulthandler._sigsegv()", "print(1)"], [])
    assert _statuses(out) == ["ok", "killed", "skipped"]
    assert "SIGSEGV" in out[1].error
    out = sandbox.replay(["import os, signal", "os.kill(os.getpid(), signal.SIGKILL)", "print(1)"], [])
    assert _statuses(out) == ["ok", "killed", "skipped"]
    assert "SIGKILL" in out[1].error
    out = sandbox.replay(["import os\nos._exit(0)", "print(1)"], [])
    assert _statuses(out) == ["killed", "skipped"]
    assert "exited with code 0" in out[0].error


@pytest.mark.timeout(60)
def test_stdout_flood_is_capped_and_returns_promptly(sandbox):
    cap = sandbox.limits.max_output_bytes
    cells = [
        "print('x' * (50 * 1024 * 1024))",
        "import sys\nfor _ in range(100_000):\n    sys.stdout.write('y' * 500)\nsys.stderr.write('z' * 10**6)",
        "import os\nos.write(1, b'fd-level ' * 10**6)\nprint('small')",
    ]
    t0 = time.monotonic()
    out = sandbox.replay(cells, [])
    assert time.monotonic() - t0 < 15
    assert _statuses(out) == ["ok", "ok", "ok"]
    for outcome in out[:2]:
        assert TRUNCATION_MARKER in outcome.stdout
        body, marker = outcome.stdout.split(TRUNCATION_MARKER)
        assert len(body.encode()) <= cap
        assert len(marker) < 80
    assert out[0].stdout.startswith("x" * 1000)
    assert out[1].stdout.startswith("y" * 1000)
    assert out[2].stdout == "small\n"  # fd-level writes go to the sandbox log, not the cell output


# --------------------------------------------------------------------------------------------
# hostile code
# --------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_network_is_unreachable(sandbox):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        cells = [
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\nprint('connected')",
            "socket.getaddrinfo('example.com', 443)",
            "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nu.sendto(b'x', ('8.8.8.8', 53))",
            "import urllib.request\nurllib.request.urlopen('http://93.184.216.34/', timeout=3)",
        ]
        out = sandbox.replay(cells, [])
        assert _statuses(out) == ["forbidden"] * 4, [o.error for o in out]
        assert "Operation not permitted" in out[0].error  # seccomp: no AF_INET sockets at all
        assert "gaierror" in out[1].error
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


@pytest.mark.timeout(60)
def test_filesystem_writes_and_secrets_are_forbidden(sandbox, input_images):
    for path in ("/etc/twi_probe", "/root/twi_probe"):
        assert not os.path.exists(path)
    cells = [
        "open('/etc/twi_probe', 'w').write('pwned')",
        "open('/root/twi_probe', 'w').write('pwned')",
        "print(open('/etc/shadow').read())",
        "import os\nos.listdir('/root')",
        "open('/usr/twi_probe', 'w')",
        "os.setuid(0)",
        # world-writable places are read-only inside the sandbox's mount namespace
        "import shutil\nshutil.copy(image_paths[0], '/tmp/twi_exfil_input.png')",
        "open('../../twi_escape.txt', 'w').write('outside the work dir')",
        "open('/dev/shm/twi_probe', 'w')",
        "open('/var/tmp/twi_probe', 'w')",
        "open('inside.txt', 'w').write('fine')\nprint(open('inside.txt').read())",
    ]
    out = sandbox.replay(cells, input_images)
    assert _statuses(out) == ["forbidden"] * 10 + ["ok"], [o.error for o in out]
    # EACCES from the uid drop or EROFS from the read-only mounts, whichever the kernel checks first
    assert all("PermissionError" in o.error or "Read-only file system" in o.error for o in out[:9])
    assert all("Read-only file system" in o.error for o in out[6:9])
    assert "No such file or directory" in out[9].error  # /var is masked (allowlist view of /)
    assert out[10].stdout == "fine\n"
    for path in ("/etc/twi_probe", "/root/twi_probe", "/usr/twi_probe", "/tmp/twi_exfil_input.png"):
        assert not os.path.exists(path)
    assert not os.path.exists("/tmp/twi_escape.txt") and not os.path.exists("/dev/shm/twi_probe")


@pytest.mark.timeout(60)
def test_parent_environment_does_not_leak(sandbox, monkeypatch):
    monkeypatch.setenv("TWI_SECRET", "s3cr3t")
    cells = [
        "import os\nprint(dict(os.environ))",
        f"print(open('/proc/{os.getpid()}/environ', 'rb').read())",
    ]
    out = sandbox.replay(cells, [])
    assert out[0].status == "ok"
    assert "s3cr3t" not in out[0].stdout and "TWI_SECRET" not in out[0].stdout
    assert "'MPLBACKEND': 'Agg'" in out[0].stdout
    assert out[1].status in ("forbidden", "error")  # the private /proc does not even list the parent
    assert "s3cr3t" not in out[1].stdout + out[1].error


@pytest.mark.timeout(60)
def test_fork_bomb_is_bounded_and_cleaned_up(sandbox):
    cells = [
        "import os, time\n"
        "made, failed = 0, 0\n"
        "for _ in range(500):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        failed += 1\n"
        "        continue\n"
        "    if pid == 0:\n"
        "        os.setsid()\n"  # try to escape the process group too
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    made += 1\n"
        "print(made < 64, failed > 0)",
    ]
    t0 = time.monotonic()
    out = sandbox.replay(cells, [])
    pgid = sandbox.last_pid
    # reported as an attempt by the policy monitor, bounded by RLIMIT_NPROC in the kernel
    assert out[0].status == "forbidden" and "os.fork" in out[0].error, out[0].error
    assert out[0].stdout == "True True\n"
    assert time.monotonic() - t0 < 20
    assert _leftovers(pgid) == []


@pytest.mark.timeout(60)
def test_sandbox_recovers_after_hostile_trajectory(sandbox, input_images):
    hostile = [
        "import os, signal\ntry:\n    os.killpg(0, signal.SIGKILL)\nexcept Exception:\n    pass",
        "print('unreachable')",
    ]
    out = sandbox.replay(hostile, input_images)
    assert _statuses(out) == ["killed", "skipped"]
    benign = ["w, h = image.size\nprint(w, h)", "image.crop((0, 0, w // 2, h // 2)).save('half.png')"]
    out = sandbox.replay(benign, input_images)
    assert _statuses(out) == ["ok", "ok"]
    assert out[0].stdout == "64 48\n"
    assert _png_size(out[1].images[0][1]) == (32, 24)


@pytest.mark.timeout(60)
def test_work_dir_is_private_fixed_and_removed_afterwards(sandbox, input_images):
    cells = [
        "import os\nprint(work_dir, os.getcwd(), os.environ['HOME'], os.environ['TMPDIR'])\n"
        "open('junk.bin', 'wb').write(b'0' * 1000)\nprint(sorted(os.listdir('/tmp')))",
    ]
    out = sandbox.replay(cells, input_images)
    assert out[0].status == "ok", out[0].error
    # the host's /tmp is hidden; the work dir has the same path in every replay
    # (an interpreter installed under /tmp, e.g. a CI checkout's venv, stays visible read-only)
    interp = {p.split(os.sep)[2] for p in interpreter_dirs_under("/tmp")}
    expected = sorted({".mplconfig", "work"} | interp)
    assert out[0].stdout == f"/tmp/work /tmp/work /tmp/work /tmp/work\n{expected}\n"
    assert [p for p in os.listdir(sandbox._base) if p.startswith(("traj-", "ctl-"))] == []


# --------------------------------------------------------------------------------------------
# determinism
# --------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_replays_are_deterministic(sandbox, input_images):
    cells = [
        "import numpy as np, random\nprint(np.random.rand(3), random.random(), {'b', 'a', 'c'})",
        "import cv2\ngray = cv2.cvtColor(cv2.imread(image_paths[0]), cv2.COLOR_BGR2GRAY)\n"
        "cv2.imwrite('edges.png', cv2.Canny(gray, 30, 90))\nprint(gray.mean())",
        "import matplotlib.pyplot as plt\nplt.hist(np.asarray(image).ravel(), bins=16)\n"
        "plt.title('histogram')\nplt.show()",
        "from skimage import filters, exposure\nprint(filters.threshold_otsu(gray))\n"
        "exposure.equalize_hist(np.asarray(images[1])).__class__",
        "print(object())",
    ]
    first = sandbox.replay(cells, input_images)
    second = sandbox.replay(cells, input_images)
    assert _statuses(first) == ["ok"] * 5, [o.error for o in first]
    assert [o.stdout for o in first] == [o.stdout for o in second]
    assert [o.images for o in first] == [o.images for o in second]
    assert sum(len(o.images) for o in first) == 2


@pytest.mark.timeout(60)
def test_forged_messages_kill_the_child_not_the_parent(sandbox):
    find_fd = (
        "import gc, os\nfd = next(o for o in gc.get_objects() if type(o).__name__ == 'Worker').resp_fd\n"
    )
    out = sandbox.replay([find_fd + "os.write(fd, b'\\xff\\xff\\xff\\xff')", "print(1)"], [])
    assert _statuses(out) == ["killed", "skipped"]
    assert "protocol violation" in out[0].error and "exceeds" in out[0].error
    forged = '{"type": "cell", "index": 0, "status": "timeout", "stdout": "", "error": "", "images": []}'
    out = sandbox.replay(
        [find_fd + f"m = {forged!r}.encode()\nos.write(fd, len(m).to_bytes(4, 'big') + m)", "print(1)"], []
    )
    assert _statuses(out) == ["killed", "skipped"]
    assert "invalid status 'timeout'" in out[0].error


@pytest.mark.timeout(60)
def test_forked_child_falling_through_does_not_answer(sandbox):
    cells = ["import os\npid = os.fork()\nprint('hello')", "print('next', os.getpid() == 2)"]
    out = sandbox.replay(cells, [])
    assert _statuses(out) == ["forbidden", "ok"], [o.error for o in out]
    assert out[0].stdout == "hello\n" and out[1].stdout == "next True\n"


@pytest.mark.timeout(60)
def test_undecodable_input_image_is_none(sandbox):
    inputs = [
        InputImage("broken.png", b"not a png at all"),
        InputImage("ok.bmp", _encode(_gradient(), "BMP")),
    ]
    out = sandbox.replay(["print(image, image_paths, images[1].size, images[1].format)"], inputs)
    assert out[0].status == "ok", out[0].error
    assert out[0].stdout == "None ['input_0.png', 'input_1.bmp'] (64, 48) BMP\n"
    assert any("input_0.png" in note for note in sandbox.last_notes)


@pytest.mark.timeout(60)
def test_fallback_without_pid_namespace_still_kills_the_group(input_images):
    with _box(SandboxLimits(cell_timeout_s=1.5)) as box:
        box.use_pid_namespace = False
        out = box.replay(
            [
                "import os\nprint(image.size, os.getuid(), os.getpid() > 2)",
                "import time\nfor _ in range(3):\n    if os.fork() == 0:\n        time.sleep(30)\n        os._exit(0)",
                "time.sleep(100)",
            ],
            input_images,
        )
        pgid = box.last_pid
        assert box.last_layers["pid_namespace"] is False
    assert _statuses(out) == ["ok", "forbidden", "timeout"]
    assert out[0].stdout == f"(64, 48) {SANDBOX_UID} True\n"
    assert _leftovers(pgid) == []


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("code", "needle"),
    [
        ("import subprocess\nsubprocess.run(['id'], capture_output=True)", "subprocess.Popen"),
        ("import os\nos.system('true')", "os.system"),
        ("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\nexcept OSError:\n    pass",
         "network access"),
        ("try:\n    open('/etc/passwd').read()\nexcept OSError:\n    pass", "reading host files"),
        ("import ctypes\nctypes.CDLL(None).getpid()", "ctypes"),
    ],
)
def test_policy_monitor_reports_contained_or_caught_attempts(sandbox, code, needle):
    out = sandbox.replay([code, "print('after')"], [])
    assert out[0].status == "forbidden" and needle in out[0].error, (out[0].status, out[0].error)
    assert (out[1].status, out[1].stdout) == ("ok", "after\n")


@pytest.mark.timeout(60)
def test_policy_monitor_has_no_false_positive_on_normal_library_work(sandbox, input_images):
    code = (
        "import numpy as np, cv2, os\n"
        "from skimage import filters, measure\n"
        "import matplotlib.pyplot as plt\n"
        "a = np.asarray(image.convert('L'))\n"
        "e = cv2.Canny(a, 50, 150); m = filters.threshold_otsu(a + 1); lab = measure.label(a > m)\n"
        "plt.imshow(e); plt.savefig('plot.png'); os.makedirs('out', exist_ok=True)\n"
        "open('out/notes.txt', 'w').write('x'); print(open(np.__file__).read(5) != '')"
    )
    out = sandbox.replay([code], input_images)
    assert out[0].status == "ok", out[0].error
    assert out[0].stdout.startswith("True")


@pytest.mark.timeout(60)
def test_trajectory_paths_are_mapped_into_the_work_dir(sandbox):
    """Thyme opens the absolute input path from its prompt and writes to
    /mnt/data/temp_processed_images/; PyVision uses image_clue_K; both work, and what the cell
    prints shows the trajectory's own paths, not the sandbox's."""
    thyme_path = "/data/thyme/images/page 7.png"  # exists nowhere on this machine
    images = [InputImage("page.png", _encode(_gradient()), path=thyme_path),
              InputImage("b.jpg", _encode(_gradient(30, 20), "JPEG"), path="images/b.jpg")]
    cells = [
        "from PIL import Image\nimport os\n"
        f"img = Image.open({thyme_path!r})\nprint(img.size, {thyme_path!r})\n"
        "os.makedirs('/mnt/data/temp_processed_images', exist_ok=True)\n"
        "out = '/mnt/data/temp_processed_images/crop_0.png'\n"
        "img.crop((0, 0, 32, 24)).resize((64, 48)).save(out)\nprint(out)",
        "print(Image.open('images/b.jpg').size, image_clue_1.size, image_clue_0.size)",
        "processed_path = '/mnt/data/temp_processed_images/' + 'crop_0.png'",  # Thyme's variable
        "import cv2\nedges = cv2.Canny(cv2.imread(image_path), 50, 150)\n"
        "cv2.imwrite(f'/mnt/data/temp_processed_images/edges_{1}.jpg', edges)\n"
        "print('saved to /mnt/data/temp_processed_images/edges_1.jpg')",
        "print('see', 'crop_x.png', 'and the input', image_path)",  # no such file / an input: nothing
        "image_clue_0.rotate(90, expand=True)",  # a PIL image as the last expression is shown
        "n = 3\nn * 2",  # other last expressions show nothing (script-style observations)
        "open('/mnt/other.png', 'wb').write(b'x')",  # only the output folder is mapped
    ]
    out = sandbox.replay(cells, images)
    assert _statuses(out)[:7] == ["ok"] * 7, [o.error for o in out]
    assert out[0].stdout == f"(64, 48) {thyme_path}\n/mnt/data/temp_processed_images/crop_0.png\n"
    assert [n for n, _ in out[0].images] == ["cell0_0_crop_0.png"]
    assert _png_size(out[0].images[0][1]) == (64, 48)
    assert out[1].stdout == "(20, 30) (20, 30) (64, 48)\n"
    assert [n for n, _ in out[2].images] == ["cell2_0_crop_0.png"]
    assert out[2].images[0][1] == out[0].images[0][1]
    assert [n for n, _ in out[3].images] == ["cell3_0_edges_1.png"]
    assert out[3].stdout == "saved to /mnt/data/temp_processed_images/edges_1.jpg\n"
    assert out[4].images == [] and out[4].stdout == "see crop_x.png and the input input_0.png\n"
    assert [(n, _png_size(d)) for n, d in out[5].images] == [("cell5_0_output.png", (48, 64))]
    assert out[6].images == [] and out[6].stdout == ""
    assert out[7].status in ("error", "forbidden") and out[7].images == []


@pytest.mark.timeout(60)
def test_inputs_open_by_relative_path_bare_name_and_prompt_path(sandbox):
    """A DeepEyesV2-style cell opens its input by bare file name (the record lists
    images/stars.png), or builds the relative path at run time; a Thyme cell opens the absolute
    path of its prompt with cv2. All read the input; naming an input is not an output."""
    images = [InputImage("stars.png", _encode(_gradient()), path="images/stars.png"),
              InputImage("17127.jpg", _encode(_gradient(30, 20), "JPEG"), path="/eval/17127.jpg")]
    cells = [
        "from PIL import Image\nprint(Image.open('stars.png').size)",
        "import os\nprint(Image.open(os.path.join('images', 'stars.png')).size, 'stars.png')",
        "import cv2\nprint(cv2.imread('/eval/17127.jpg').shape)",
        "print(cv2.imread('17127.jpg').shape)",
        "Image.open('stars.png').crop((0, 0, 8, 8)).save('stars.png')\nprint(Image.open('images/stars.png').size)",
    ]
    out = sandbox.replay(cells, images)
    assert _statuses(out) == ["ok"] * 5, [o.error for o in out]
    assert [o.stdout for o in out] == ["(64, 48)\n", "(64, 48) stars.png\n", "(30, 20, 3)\n", "(30, 20, 3)\n", "(8, 8)\n"]
    assert out[1].images == []  # printing an input's name does not make it an output
    assert [n for n, _ in out[4].images] == ["cell4_0_stars.png"]  # overwriting it does, once (two names, one file)


# --- the inputs in grey, handed back for the judges ---------------------------------------------
@pytest.fixture(scope="module", params=[ProcessSandbox, ZygoteSandbox], ids=["process", "zygote"])
def grey_sandbox(request):
    box = request.param(SandboxLimits(cell_timeout_s=15.0, total_timeout_s=40.0), uid=SANDBOX_UID, gid=SANDBOX_UID,
                        input_greys=True)
    yield box
    box.close()


def _pil_grey(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"))


def test_inputs_come_back_in_grey_as_loaded_before_any_cell_ran(grey_sandbox, input_images):
    """Each input's grey pixels equal what the judges would decode themselves (PNG and JPEG), even
    when the cells then paint over the input in memory and on disk; an input that does not load is
    None; the cells' own outcomes are unchanged."""
    broken = InputImage("broken.png", b"\x89PNG\r\n\x1a\n not really")
    cells = ["image.paste(0, (0, 0) + image.size)\nimage.save(image_path)\nprint(image.getextrema())",
             "print(images[2])"]
    out = grey_sandbox.replay(cells, [*input_images, broken])
    assert _statuses(out) == ["ok", "ok"]
    assert out[1].stdout == "None\n"
    greys = grey_sandbox.last_input_greys
    assert len(greys) == 3 and greys[2] is None
    for image, grey in zip(input_images, greys[:2], strict=True):
        expected = _pil_grey(image.data)
        assert grey.dtype == np.uint8 and grey.shape == expected.shape
        assert np.array_equal(grey, expected) and float(grey.std()) > 0  # not the painted-over black


def test_inputs_in_grey_only_when_asked(sandbox, input_images):
    sandbox.replay(["x = 1"], input_images)
    assert sandbox.last_input_greys == [None, None]
