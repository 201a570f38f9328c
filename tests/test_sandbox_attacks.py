"""The standard attack list (docs: ../shared/reference/sandbox.md) replayed against every sandbox.

Each test replays one hostile trajectory and asserts three things:

1. the attack failed: the sensitive effect is absent on the *host* (files checked at their real
   paths, listeners the test opened on 127.0.0.1 got nothing, host processes alive, secrets absent
   from every output), the replay returned within the wall-clock limit, output stayed capped, and
   each cell got the status this sandbox gives it;
2. the next trajectory on the same sandbox instance is replayed correctly (state carried across
   cells, an image crop saved and returned);
3. the host is untouched: no new entries in /etc, /usr, /root, /var/tmp, nothing owned by the
   sandbox uid or named like an attack artefact in /tmp, /dev/shm, the project or the folder
   holding it, guarded files unchanged, no new host mount, no process left running as the
   sandbox uid or in its session.

Network targets are loopback only (127.0.0.1, ::1, "localhost") and names under ".invalid".
An attack that succeeds is never weakened and never expected to fail: the test asserts what
happened, then fails with a reason starting "ESCAPE" (host data or a host channel reached) or
"LIMIT" (a limit of the sandbox did not hold). A protection that belongs to one isolation layer
(cgroup memory limit, seccomp, the size-limited work dir) is asserted whenever
:func:`pipeline.sandbox.levels.check_level` confirms that layer on this machine, which it does
whenever the configured level (``replay.min_sandbox_level``, default strict) is met; only on a
machine without the layer does the test skip, saying which layer and level are missing. Known
limits of the *status reporting* (a cell can fake its own "ok" after the kernel refused what it
tried) are documented in the tests concerned, which assert what really held instead.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import select
import shutil
import socket
import subprocess
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pipeline.sandbox as sandbox_pkg
from pipeline.config import ReplayConfig
from pipeline.sandbox import TRUNCATION_MARKER, CellOutcome, InputImage, ProcessSandbox, SandboxLimits
from pipeline.sandbox.levels import LAYER_LABELS, SANDBOX_KINDS, SandboxCheck, check_level, level_of_layer
from tests.attack_helpers import (
    ATTACK_MARK,
    SHADOW_LINE,
    DiskUse,
    MemoryScanner,
    PeakMemory,
    cell,
    host_changes,
    leftovers,
    png_dimensions,
    sandbox_processes,
    snapshot,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox attack tests run as root")


def _sandbox_classes() -> list[type]:
    classes: list[type] = [ProcessSandbox]
    zygote = getattr(sandbox_pkg, "ZygoteSandbox", None)
    if zygote is None:
        try:
            from pipeline.sandbox.zygote import ZygoteSandbox as zygote
        except ImportError:
            zygote = None
    if zygote is not None:
        classes.append(zygote)
    return classes


SANDBOX_CLASSES = _sandbox_classes()
# Tight limits keep the suite fast; the image stack still imports under 1.5 GB of address space.
LIMITS = SandboxLimits(cell_timeout_s=3.0, total_timeout_s=10.0, memory_mb=1536)
WALL_SLACK_S = 8.0  # start-up (~1 s) + kill and reap (<= 5 s) on a busy 2-core machine
# Own uids (no /etc/passwd entry needed), apart from tests/test_sandbox.py's 60000 + pid % 5000.
UID_BASE = {"ProcessSandbox": 50000, "ZygoteSandbox": 55000}

TOKEN = f"{ATTACK_MARK}-{os.getpid()}"  # in the name of every file an attack tries to create
HOST_PID = os.getpid()
REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_DIRS = (str(REPO_ROOT),)
SITE_PACKAGES = sysconfig.get_paths()["purelib"]
SHARED_DIRS = tuple(
    dict.fromkeys(
        [
            *PROJECT_DIRS,
            *(
                os.path.join(d, sub)
                for d in PROJECT_DIRS
                for sub in ("tests", "pipeline", "pipeline/sandbox")
            ),
            str(REPO_ROOT.parent),  # beside the checkout (other checkouts, shared data)
            SITE_PACKAGES,
        ]
    )
)
PROJECT_TEXT_FILES = tuple(
    os.path.join(d, f)
    for d in PROJECT_DIRS
    for f in ("pyproject.toml", "README.md", "pipeline/sandbox/runner.py", "pipeline/sandbox/process.py")
)
DISK_ATTEMPT_BYTES = 16 * 63 * (1 << 20)  # what the disk-fill cell tries to write (~1 GiB)
DISK_QUOTA_BYTES = 256 << 20  # more than this on the host disk from one trajectory = no quota


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _gradient(w: int, h: int) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([xx * 5 % 256, yy * 7 % 256, (xx + yy) % 256], -1).astype(np.uint8))


BENIGN_PNG = _png(_gradient(64, 48))
BOMB_PNG = _png(Image.new("1", (20000, 20000)))  # 400 Mpx, ~50 KB on disk


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
@dataclass
class Host:
    """Host-side bait: a secret in the environment, a root-only file, a world-readable image."""

    secret_env: str  # value of $TWI_ATTACK_SECRET in the test process
    secret_file: str  # mode 0600, root-owned
    secret_file_text: str
    fixture_dir: str  # /var/tmp/twi-fixture-*, 0755 (stands in for a dataset on a shared disk)
    host_png: str  # world-readable image outside any work dir
    host_png_size: tuple[int, int]
    tmp_marker_dir: str  # /tmp/twi-fixture-* (hidden behind the sandbox's private /tmp)


@pytest.fixture(scope="module")
def host():
    secret_env = "twi-attack-secret-" + secrets.token_hex(16)
    old = os.environ.get("TWI_ATTACK_SECRET")
    os.environ["TWI_ATTACK_SECRET"] = secret_env  # set before any sandbox (or zygote) starts
    fixture_dir = tempfile.mkdtemp(prefix="twi-fixture-", dir="/var/tmp")
    tmp_marker_dir = tempfile.mkdtemp(prefix="twi-fixture-", dir="/tmp")
    os.chmod(fixture_dir, 0o755)
    os.chmod(tmp_marker_dir, 0o755)
    secret_file = os.path.join(fixture_dir, "secret.txt")
    secret_text = "root-only-" + secrets.token_hex(16)
    Path(secret_file).write_text(secret_text)
    os.chmod(secret_file, 0o600)
    host_png = os.path.join(fixture_dir, "host.png")
    _gradient(37, 23).save(host_png)
    os.chmod(host_png, 0o644)
    Path(tmp_marker_dir, "marker.txt").write_text("host /tmp")
    yield Host(secret_env, secret_file, secret_text, fixture_dir, host_png, (37, 23), tmp_marker_dir)
    shutil.rmtree(fixture_dir, ignore_errors=True)
    shutil.rmtree(tmp_marker_dir, ignore_errors=True)
    if old is None:
        os.environ.pop("TWI_ATTACK_SECRET", None)
    else:
        os.environ["TWI_ATTACK_SECRET"] = old


@pytest.fixture(scope="module", params=SANDBOX_CLASSES, ids=lambda cls: cls.__name__)
def box(request, host):
    cls = request.param
    uid = UID_BASE.get(cls.__name__, 45000) + os.getpid() % 5000
    sandbox = cls(LIMITS, uid=uid, gid=uid)
    yield sandbox
    sandbox.close()


# The level `twi-curate run` refuses to replay below (replay.min_sandbox_level, default strict).
CONFIGURED_LEVEL = ReplayConfig().min_sandbox_level


@pytest.fixture(scope="module")
def level_check(box) -> SandboxCheck:
    """The layers a sandbox of ``box``'s kind really applies on this machine (a probe cell confirms
    each from inside), checked against the configured level, as `twi-curate run` does."""
    kind = next(k for k, cls in SANDBOX_KINDS.items() if cls is type(box))
    _ok, report = check_level(ReplayConfig(sandbox=kind, min_sandbox_level=CONFIGURED_LEVEL))
    return report


@dataclass
class Replay:
    out: list[CellOutcome]
    elapsed_s: float

    @property
    def statuses(self) -> list[str]:
        return [o.status for o in self.out]

    @property
    def text(self) -> str:
        return "\n".join(o.stdout + "\n" + o.error for o in self.out)


class Harness:
    """Runs one attack trajectory on the shared sandbox and checks the three properties."""

    def __init__(self, box, host: Host, level_check: SandboxCheck) -> None:
        self.box = box
        self.host = host
        self.level_check = level_check
        self.uid = getattr(box, "uid", None)
        self.uids = {self.uid} if self.uid is not None else set()

    def breached(self, layer: str, failure: str) -> None:
        """The attack got past what ``layer`` stops: the test fails whenever this machine's sandbox
        has the layer (always so when the configured level, which includes it, is met). Only where
        the layer is unavailable does it skip, saying what is missing."""
        check = self.level_check
        if check.layers.get(layer):
            pytest.fail(failure)
        pytest.skip(
            f"layer {layer!r} ({LAYER_LABELS.get(layer, layer)}, level {level_of_layer(layer)}) is not "
            f"active on this machine: {check.summary()}; without it: {failure}"
        )

    def _leaks(self, text: str) -> list[str]:
        found = [s for s in (self.host.secret_env, self.host.secret_file_text) if s in text]
        found += [m.group(0) for m in SHADOW_LINE.finditer(text)]
        return found

    def run(
        self,
        cells: list[str],
        inputs: list[InputImage] | tuple = (),
        *,
        expect: list,
        exclude_pids: frozenset[int] = frozenset(),
        leaks_checked_by_test: bool = False,
        images_checked_by_test: bool = False,
    ) -> Replay:
        """Replay ``cells`` (the attack), check limits, statuses, leaks, the host and a benign run.

        ``expect[i]``: the status of cell i, a tuple of acceptable statuses, or None when the test
        body judges it (an attack that may succeed).
        """
        assert len(expect) == len(cells)
        before = snapshot(SHARED_DIRS, PROJECT_TEXT_FILES)
        t0 = time.monotonic()
        out = self.box.replay(cells, list(inputs))
        result = Replay(out, time.monotonic() - t0)
        print(f"[attack] {_level(self)} statuses={result.statuses} elapsed={result.elapsed_s:.1f}s")
        sid = getattr(self.box, "last_pid", None)

        # 1. limits and statuses
        assert len(out) == len(cells)
        bound = min(LIMITS.total_timeout_s, len(cells) * LIMITS.cell_timeout_s) + WALL_SLACK_S
        assert result.elapsed_s < bound, f"replay took {result.elapsed_s:.1f} s (limit {bound:.0f} s)"
        detail = [(o.status, o.stdout[-300:], o.error[-600:]) for o in out]
        for k, (outcome, want) in enumerate(zip(out, expect, strict=True)):
            if want is None:
                continue
            allowed = (want,) if isinstance(want, str) else tuple(want)
            assert outcome.status in allowed, f"cell {k}: {outcome.status} not in {allowed}: {detail}"
        cap = LIMITS.max_output_bytes + 256
        for outcome in out:
            assert len(outcome.stdout.encode()) <= cap and len(outcome.error.encode()) <= cap
            for _name, data in outcome.images:
                if not images_checked_by_test:
                    w, h = png_dimensions(data)
                    assert w * h <= 64 * 1024 * 1024
        if not leaks_checked_by_test:
            assert self._leaks(result.text) == [], "host secret in the sandbox output"

        # 3. no process survives the trajectory
        assert leftovers(self.uids, sid, exclude_pids) == []
        os.kill(1, 0)  # the host's init (and this test process) are alive

        # 2. the same instance replays a benign trajectory correctly
        self.check_benign()
        assert leftovers(self.uids, getattr(self.box, "last_pid", None), exclude_pids) == []

        # 3. the host filesystem and mount table are untouched
        after = snapshot(SHARED_DIRS, PROJECT_TEXT_FILES)
        assert host_changes(before, after, self.uids) == []
        base = getattr(self.box, "_base", None)
        if base and os.path.isdir(base):  # the level-1 sandbox removes its per-trajectory dirs
            assert [p for p in os.listdir(base) if p.startswith(("traj-", "ctl-"))] == []
        return result

    def check_benign(self) -> None:
        cells = ["x = 41", "print(x + 1)\nimage.crop((8, 4, 40, 28)).save('crop.png')"]
        out = self.box.replay(cells, [InputImage("benign.png", BENIGN_PNG)])
        assert [o.status for o in out] == ["ok", "ok"], [(o.status, o.error[-500:]) for o in out]
        assert out[0].stdout == "" and out[1].stdout == "42\n"
        assert out[0].images == [] and len(out[1].images) == 1
        name, data = out[1].images[0]
        assert name.endswith("crop.png")
        assert png_dimensions(data) == (32, 24)
        with Image.open(io.BytesIO(data)) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(_gradient(64, 48))[4:28, 8:40])


@pytest.fixture
def h(box, host, level_check) -> Harness:
    harness = Harness(box, host, level_check)
    assert harness.uids, "the sandbox must expose the uid it runs the cells as"
    assert sandbox_processes(harness.uids) == [], "stray sandbox processes before the test"
    return harness


def _level(h: Harness) -> str:
    return getattr(h.box, "level", "")


# --------------------------------------------------------------------------------------------
# resource exhaustion
# --------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_fork_bomb(h):
    bomb = cell(
        """
        import os, time
        while True:
            try:
                if os.fork() == 0:
                    os.setsid()  # every child leaves the process group and keeps forking
            except OSError:
                time.sleep(60)
        """
    )
    r = h.run([bomb, "print('never')"], expect=["timeout", "skipped"])
    assert "wall-clock limit" in r.out[0].error


@pytest.mark.timeout(60)
def test_thread_bomb(h):
    bomb = cell(
        """
        import _thread, time
        n = 0
        try:
            while True:
                _thread.start_new_thread(time.sleep, (60,))
                n += 1
        finally:
            print('threads', n)
        """
    )
    r = h.run([bomb, "print('after')"], expect=["error", "ok"])
    assert "can't start new thread" in r.out[0].error
    assert int(r.out[0].stdout.split()[1]) < LIMITS.max_processes  # RLIMIT_NPROC counts threads
    assert r.out[1].stdout == "after\n"


@pytest.mark.timeout(60)
def test_memory_bombs(h):
    cells = [
        "blob = bytearray(10**10)",
        "import numpy as np\nbig = np.ones((10**6, 10**4))",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))",
        "del chunks\nprint('after')",
    ]
    # filling 1.5 GB in 64 MB chunks hits the memory limit, or on a loaded machine the 3 s wall
    # clock first: contained either way (a timeout stops the sandbox, so the last cell is skipped)
    r = h.run(cells, expect=["memory", "memory", ("memory", "timeout"), ("ok", "skipped")])
    assert "MemoryError" in r.out[0].error and "Unable to allocate" in r.out[1].error
    if r.out[2].status == "memory":
        assert r.out[3].status == "ok" and r.out[3].stdout == "after\n"
    else:
        assert r.out[3].status == "skipped"


@pytest.mark.timeout(60)
def test_memory_split_across_processes(h):
    # RLIMIT_AS is per process: three children of 700 MB each sum past the trajectory's 1.5 GB.
    spread = cell(
        """
        import os, time
        kids = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                try:
                    hog = b'\\x01' * (700 << 20)
                    time.sleep(1.0)
                finally:
                    os._exit(0)
            kids.append(pid)
        print([os.waitpid(p, 0)[1] for p in kids])
        """
    )
    with PeakMemory(h.uids) as mem:
        # "forbidden": the fork was reported; "memory"/"killed": a cgroup OOM-killed the worker too;
        # "timeout": the worker kept waiting for children stalled at the cgroup's limit
        r = h.run(
            [spread, "print('after')"],
            expect=[("forbidden", "memory", "killed", "timeout"), ("ok", "skipped")],
        )
    assert r.out[0].status != "forbidden" or "os.fork" in r.out[0].error
    assert mem.peak_processes >= 1, "the sampler never saw the sandbox"
    limit = LIMITS.memory_mb << 20
    if mem.peak_bytes > 1.1 * limit:
        h.breached(
            "cgroup_memory",
            f"LIMIT: no per-trajectory memory limit: {mem.peak_processes} sandbox processes held "
            f"{mem.peak_bytes >> 20} MB (PSS) at once, memory_mb={LIMITS.memory_mb}",
        )


@pytest.mark.timeout(60)
def test_cpu_spin_ignoring_signals(h):
    spin = cell(
        """
        import signal
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):
            signal.signal(s, signal.SIG_IGN)
        while True:
            pass
        """
    )
    r = h.run([spin, "print('never')"], expect=["timeout", "skipped"])
    assert LIMITS.cell_timeout_s * 1000 * 0.9 <= r.out[0].duration_ms < (LIMITS.cell_timeout_s + 3) * 1000


@pytest.mark.timeout(60)
def test_sleep_past_the_wall_limit(h):
    r = h.run(["import time\ntime.sleep(100)", "print('never')"], expect=["timeout", "skipped"])
    assert f"{LIMITS.cell_timeout_s:g} s wall-clock limit" in r.out[0].error


@pytest.mark.timeout(60)
def test_stdout_flood(h):
    cells = [
        "print('x' * (50 << 20))",
        "import sys\nsys.stderr.write('e' * (50 << 20))",
        "import os\nos.write(1, b'y' * (50 << 20))\nos.write(2, b'z' * (50 << 20))\nprint('small')",
    ]
    r = h.run(cells, expect=["ok", "ok", "ok"])
    for outcome in r.out[:2]:
        body, marker = outcome.stdout.split(TRUNCATION_MARKER)
        assert len(body.encode()) <= LIMITS.max_output_bytes and len(marker) < 80
    assert r.out[2].stdout == "small\n"


@pytest.mark.timeout(60)
def test_file_over_the_size_limit(h):
    cells = [
        "open('big.bin', 'wb').write(b'\\0' * (65 << 20))",
        "import os\nprint(os.path.getsize('big.bin'))",
        "import numpy as np\nnp.zeros(70 << 20, np.uint8).tofile('big2.bin')",
    ]
    r = h.run(cells, expect=["error", "ok", "error"])
    assert "File too large" in r.out[0].error
    assert int(r.out[1].stdout) <= LIMITS.max_file_bytes


@pytest.mark.timeout(60)
def test_disk_fill(h):
    fill = cell(
        """
        total = 0
        try:
            for k in range(16):
                with open(f'fill{k}.bin', 'wb') as fh:
                    chunk = b'\\0' * (1 << 20)
                    for _ in range(63):  # stays under RLIMIT_FSIZE per file
                        fh.write(chunk)
                        total += len(chunk)
        finally:
            print('written', total)
        """
    )
    work_fs = getattr(h.box, "_base", None) or "/tmp"  # where the level-1 work dirs live on the host
    with DiskUse(work_fs) as disk:
        r = h.run([fill, "print('after')"], expect=[None, ("ok", "skipped")])
    assert DiskUse(work_fs).start_free > disk.start_free - (256 << 20)  # the work dir was removed
    first = r.out[0]
    if disk.peak_bytes > DISK_QUOTA_BYTES:
        # the work dir is a size-limited tmpfs inside the sandbox's mount namespace (private /tmp)
        h.breached(
            "read_only_filesystem",
            f"LIMIT: no disk quota on the work dir: the trajectory put {disk.peak_bytes >> 20} MB on the "
            f"host disk ({work_fs}) in {first.duration_ms / 1000:.1f} s, status {first.status!r}; only "
            "RLIMIT_FSIZE per file and the wall clock bound it",
        )
    assert first.status in ("error", "memory", "timeout", "killed"), first.status
    assert not first.stdout.startswith(f"written {DISK_ATTEMPT_BYTES}")


# --------------------------------------------------------------------------------------------
# network
# --------------------------------------------------------------------------------------------
def _nothing_arrived(sock: socket.socket, wait_s: float = 0.3) -> bool:
    readable, _, _ = select.select([sock], [], [], wait_s)
    return not readable


@pytest.mark.timeout(60)
def test_tcp_connect_to_a_loopback_listener(h):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        cells = [
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')",
            f"s = socket.create_connection(('localhost', {port}), timeout=2)\nprint('connected')",
            f"s = socket.socket(socket.AF_INET6)\ns.settimeout(2)\ns.connect(('::1', {port}))\nprint('connected')",
            "print('after')",
        ]
        r = h.run(cells, expect=["forbidden", "forbidden", "forbidden", "ok"])
        assert _nothing_arrived(listener)
    assert "connected" not in r.text


@pytest.mark.timeout(60)
def test_udp_send_to_a_loopback_listener(h):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        send = cell(
            """
            import socket
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.sendto(b'$token', ('127.0.0.1', $port))
            print('sent')
            """,
            token=TOKEN,
            port=port,
        )
        r = h.run([send], expect=["forbidden"])
        assert _nothing_arrived(server)
    assert "sent" not in r.out[0].stdout


@pytest.mark.timeout(60)
def test_dns_lookups(h):
    if not getattr(h.box, "report", {}).get("network_namespace", True):
        pytest.skip("without a network namespace the lookup could leave the machine")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as resolver:  # a fake DNS server
        resolver.bind(("127.0.0.1", 0))
        port = resolver.getsockname()[1]
        query = cell(
            """
            import socket
            q = bytes.fromhex('123401000001000000000000') + b'\\x0atwi-attack\\x07invalid\\x00\\x00\\x01\\x00\\x01'
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.sendto(q, ('127.0.0.1', $port))
            """,
            port=port,
        )
        cells = [
            "import socket\nsocket.getaddrinfo('twi-attack.invalid', 80)",
            # answered from /etc/hosts without any traffic; the attempt is still reported
            "print(sorted({a[4][0] for a in socket.getaddrinfo('localhost', 80)}))",
            query,
        ]
        r = h.run(cells, expect=["forbidden", "forbidden", "forbidden"])
        assert _nothing_arrived(resolver)
    assert "gaierror" in r.out[0].error


@pytest.mark.timeout(60)
def test_unix_sockets_on_the_host(h):
    """Abstract sockets live in the network namespace; path sockets are reachable if visible."""
    path = f"/dev/shm/twi-fixture-{os.getpid()}.sock"
    abstract = f"\0twi-fixture-{os.getpid()}"
    with socket.socket(socket.AF_UNIX) as listener, socket.socket(socket.AF_UNIX) as abstract_listener:
        listener.bind(path)
        os.chmod(path, 0o777)  # like a world-writable daemon socket (docker, dbus, X11)
        listener.listen(4)
        abstract_listener.bind(abstract)
        abstract_listener.listen(4)
        try:
            cells = [
                f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({abstract!r})\ns.sendall(b'x')",
                f"s = socket.socket(socket.AF_UNIX)\ns.connect({path!r})\ns.sendall(b'{TOKEN}')\nprint('connected')",
            ]
            r = h.run(cells, expect=["forbidden", "forbidden"])
            assert _nothing_arrived(abstract_listener)
            reached = not _nothing_arrived(listener)
            if reached:
                conn, _ = listener.accept()
                with conn:
                    payload = conn.recv(100)
        finally:
            os.unlink(path)
    assert "ConnectionRefusedError" in r.out[0].error
    if reached:
        assert payload == TOKEN.encode() and "connected" in r.out[1].stdout
        pytest.fail(
            "ESCAPE: the cell connected to a host AF_UNIX socket outside /tmp "
            f"({path}, mode 0777) and sent data: AF_UNIX connect() is not filtered and /dev/shm "
            "is visible in the sandbox"
        )
    assert "connected" not in r.out[1].stdout


# --------------------------------------------------------------------------------------------
# filesystem writes
# --------------------------------------------------------------------------------------------
def _write_targets(h: Harness) -> dict[str, tuple[list[str], list]]:
    token = TOKEN
    project = []
    for d in PROJECT_DIRS:
        project += [
            f"open('{d}/{token}.txt', 'w').write('x')",
            f"open('{d}/pyproject.toml', 'a')",  # opening for append proves write access, changes nothing
            f"open('{d}/pipeline/sandbox/runner.py', 'a')",
        ]
    from_mountinfo = cell(
        """
        import os
        root = next(l.split()[3] for l in open('/proc/self/mountinfo') if l.split()[4] == os.getcwd())
        open(os.path.join(os.path.dirname(root), '$token'), 'w')
        """,
        token=token,
    )
    home = cell(
        """
        import os
        open(os.path.expanduser('~/.bashrc'), 'a').write('echo pwned\\n')
        """
    )
    return {
        "etc": (
            [
                f"open('/etc/{token}', 'w').write('x')",
                "open('/etc/passwd', 'a')",
                f"import os\nos.mkdir('/etc/profile.d/{token}')",
            ],
            ["forbidden"] * 3,
        ),
        "usr": (
            [
                f"open('/usr/local/bin/{token}', 'w').write('#!/bin/sh')",
                f"open('{SITE_PACKAGES}/{token}.pth', 'w').write('import os')",  # would run in every python
                f"open('/usr/{token}', 'w')",
            ],
            ["forbidden"] * 3,
        ),
        "project": (project, ["forbidden"] * len(project)),
        "tmp": (
            [
                f"open('/tmp/{token}', 'w')",
                f"open('../{token}', 'w')",
                f"open('/var/tmp/{token}', 'w')",
                f"open('/dev/shm/{token}', 'w')",
                from_mountinfo,
                f"import os\nos.listdir('{h.host.tmp_marker_dir}')",
            ],
            ["forbidden"] * 5 + [("error", "forbidden")],  # the host's /tmp is not even visible
        ),
        "home": (
            [
                home,  # $HOME is the private work dir: allowed, and gone with it
                "open('/root/.bashrc', 'a').write('echo pwned')",
                f"open('/etc/profile.d/{token}.sh', 'w')",
            ],
            [("ok", "forbidden"), "forbidden", "forbidden"],
        ),
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["etc", "usr", "project", "tmp", "home"])
def test_writes_outside_the_work_dir(h, target):
    cells, expect = _write_targets(h)[target]
    r = h.run(cells, expect=expect)
    for outcome in r.out[:2]:
        if outcome.status == "forbidden":
            assert any(k in outcome.error for k in ("PermissionError", "Read-only", "not allowed")), (
                outcome.error
            )
    for d in (
        "/etc",
        "/etc/profile.d",
        "/usr",
        "/usr/local/bin",
        "/tmp",
        "/var/tmp",
        "/dev/shm",
        SITE_PACKAGES,
    ):
        assert not [n for n in os.listdir(d) if TOKEN in n], d
    for d in PROJECT_DIRS:
        assert not [n for n in os.listdir(d) if TOKEN in n]


@pytest.mark.timeout(60)
def test_symlink_and_hardlink_escapes(h):
    cells = [
        "import os\nos.symlink('/etc/shadow', 'shadow_link')\nprint(open('shadow_link').read())",
        # links the root parent will see when it collects images and removes the work dir
        f"os.symlink('{h.host.fixture_dir}', 'dir_link')\n"
        f"os.symlink('{h.host.host_png}', 'looks_like_output.png')\n"
        "os.symlink('/etc/passwd', 'passwd.png')\nprint(sorted(os.listdir('.')))",
        "os.link('/etc/passwd', 'hard_link')",
    ]
    r = h.run(cells, expect=["forbidden", "forbidden", "forbidden"])
    assert "PermissionError" in r.out[0].error
    assert r.out[1].images == []  # symlinked "outputs" are not followed
    assert sorted(os.listdir(h.host.fixture_dir)) == ["host.png", "secret.txt"]  # clean-up did not follow
    assert os.path.isfile("/etc/passwd")


# --------------------------------------------------------------------------------------------
# reading host data
# --------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_read_shadow_root_and_root_only_files(h):
    fd_walk = cell(
        """
        import os
        reached = []
        for fd in os.listdir('/proc/self/fd'):
            for depth in range(1, 12):
                p = f'/proc/self/fd/{fd}' + '/..' * depth
                try:
                    names = os.listdir(p)
                except OSError:
                    continue
                if '.bashrc' in names and '.pyenv' in names:
                    reached.append(p)
        print('root listable via', reached)
        """
    )
    cells = [
        "print(open('/etc/shadow').read())",
        "import os\nprint('.bashrc' in os.listdir('/root'))",
        "print(open('/root/.bashrc').read())",
        f"print(open('{h.host.secret_file}').read())",
        fd_walk,
    ]
    # /root listed empty (masked by a tmpfs) is as good as refused
    r = h.run(cells, expect=["forbidden", ("forbidden", "ok"), "forbidden", "forbidden", "ok"])
    assert r.out[1].status == "forbidden" or r.out[1].stdout == "False\n"
    for outcome in (r.out[0], r.out[2], r.out[3]):
        assert "PermissionError" in outcome.error or "FileNotFoundError" in outcome.error, outcome.error
    assert r.out[4].stdout == "root listable via []\n"


@pytest.mark.timeout(60)
def test_read_the_host_project(h):
    cells = []
    for d in PROJECT_DIRS:
        cells += [
            f"print(open('{d}/pyproject.toml').read()[:300])",
            f"import os\nprint(sorted(os.listdir('{d}')))",
        ]
    r = h.run(cells, expect=[None] * len(cells))
    leaked = [o for o in r.out if "[project]" in o.stdout or "'pyproject.toml'" in o.stdout]
    if leaked:
        assert "twi-curate" in r.text or "pyproject.toml" in r.text
        pytest.fail(
            f"ESCAPE: the cell read the host project ({', '.join(PROJECT_DIRS)}): pyproject.toml "
            f"contents / directory listing returned with status {[o.status for o in r.out]}; "
            "world-readable host files are visible (read-only) in the sandbox's mount namespace"
        )
    assert all(o.status in ("forbidden", "error", "ok") for o in r.out), r.statuses


@pytest.mark.timeout(60)
def test_environment_and_memory_secrets(h):
    scan = cell(
        """
        import re
        pattern = re.compile(rb'twi-attack-secret-[0-9a-f]{32}')
        found, scanned = set(), 0
        with open('/proc/self/maps') as fh:
            regions = [line.split() for line in fh]
        with open('/proc/self/mem', 'rb', buffering=0) as mem:
            for fields in regions:
                if not fields[1].startswith('rw'):
                    continue
                lo, hi = (int(x, 16) for x in fields[0].split('-'))
                pos = lo
                while pos < hi:
                    try:
                        mem.seek(pos)
                        data = mem.read(min(hi - pos, 16 << 20) + 64)
                    except (OSError, OverflowError, ValueError):
                        break
                    scanned += len(data)
                    found.update(m.decode() for m in pattern.findall(data))
                    pos += 16 << 20
        print('scanned', scanned > 0, sorted(found))
        """
    )
    dump_all = cell(
        """
        import glob
        for p in glob.glob('/proc/[0-9]*/environ') + glob.glob('/proc/[0-9]*/cmdline'):
            try:
                print(p, open(p, 'rb').read()[:4000])
            except OSError as e:
                print(p, type(e).__name__)
        """
    )
    cells = [
        "import os\nprint(sorted(os.environ.items()))",
        "print(open('/proc/1/environ', 'rb').read())",
        dump_all,
        scan,  # the worker is not dumpable after the uid drop: its own /proc/self/mem is root's
        "import time\ntime.sleep(1.5)\nprint('idle')",  # while the host scans the worker's memory
    ]
    with MemoryScanner(h.uids, h.host.secret_env.encode()) as memory:
        r = h.run(
            cells,
            expect=["ok", "forbidden", "forbidden", ("ok", "forbidden"), "ok"],
            leaks_checked_by_test=True,
        )
    assert "TWI_ATTACK_SECRET" not in r.out[0].stdout
    leaks = h._leaks(r.text)
    if leaks:
        where = [k for k, o in enumerate(r.out) if h.host.secret_env in o.stdout + o.error]
        pytest.fail(f"ESCAPE: the parent's environment secret is visible to the cell (cells {where})")
    if r.out[3].status == "ok":
        assert r.out[3].stdout == "scanned True []\n"
    assert memory.scanned and max(memory.scanned.values()) > 0, "the host-side memory scan saw nothing"
    if memory.hits:
        h.breached(
            "clean_environment",
            f"LIMIT: the parent's secret sits in the sandbox worker's memory ({memory.hits[:5]}), "
            "unreachable by the cell today but inherited (zygote environment/memory not clean)",
        )


@pytest.mark.timeout(60)
def test_read_images_outside_the_work_dir(h):
    w, ht = h.host.host_png_size
    cells = [
        f"from PIL import Image\nim = Image.open('{h.host.host_png}')\nprint('READ', im.size)",
        f"import cv2\nimg = cv2.imread('{h.host.host_png}')\nprint('READ', None if img is None else img.shape)",
        "print(cv2.imread('/etc/shadow') is None)",
        "print(Image.open('/etc/shadow'))",
        f"print(cv2.imread('{PROJECT_DIRS[0]}/README.md') is None)",
    ]
    r = h.run(cells, expect=[None, None, "ok", "forbidden", "ok"])
    assert r.out[2].stdout == "True\n" and r.out[4].stdout == "True\n"
    signs = (f"READ ({w}, {ht})", f"READ ({ht}, {w}, 3)")
    leaked = [k for k, o in enumerate(r.out[:2]) if any(s in o.stdout for s in signs)]
    if leaked:
        pytest.fail(
            f"ESCAPE: a world-readable host image outside the work dir ({h.host.host_png}) was decoded "
            f"by cells {leaked} (statuses {r.statuses[:2]}; cv2.imread bypasses the audit-hook monitor)"
        )
    assert r.out[0].status in ("forbidden", "error")
    # the file is hidden (allowlist view of /); cv2.imread reports that by returning None
    assert r.out[1].status in ("forbidden", "error") or r.out[1].stdout.startswith("READ None"), r.out[1]


# --------------------------------------------------------------------------------------------
# privileges, processes and the kernel
# --------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_ptrace_attach(h):
    attach = cell(
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        results = {}
        for target in (os.getppid(), 1, $host_pid):
            rc = libc.ptrace(16, target, None, None)  # PTRACE_ATTACH
            results[target] = (rc, os.strerror(ctypes.get_errno()))
        print(results)
        print('ATTACHED' if any(rc == 0 for rc, _ in results.values()) else 'refused')
        """,
        host_pid=HOST_PID,
    )
    r = h.run([attach], expect=["forbidden"])
    assert r.out[0].stdout.endswith("refused\n"), r.out[0].stdout
    with open("/proc/self/status") as fh:
        assert next(line for line in fh if line.startswith("TracerPid:")).split()[1] == "0"


@pytest.mark.timeout(60)
def test_mount(h):
    via_libc = cell(
        """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        rcs = [
            libc.mount(b'tmpfs', b'/tmp/work', b'tmpfs', 0, None),
            libc.mount(None, b'/', None, 32, None),  # MS_REMOUNT read-write
            libc.umount2(b'/tmp', 2),
        ]
        print(rcs, 'MOUNTED' if 0 in rcs else 'refused')
        """
    )
    via_shell = "import os\nprint(os.system('mount -t tmpfs none /mnt') != 0, os.system('umount /tmp') != 0)"
    r = h.run([via_libc, via_shell], expect=["forbidden", "forbidden"])
    assert r.out[0].stdout.endswith("refused\n"), r.out[0].stdout
    assert r.out[1].stdout == "True True\n"  # the setuid mount binary gains nothing (no_new_privs)


@pytest.mark.timeout(60)
def test_setuid_root(h):
    cells = [
        "import os\nos.setuid(0)",
        "os.setgid(0)",
        "os.setgroups([0])",
        "os.setresuid(0, 0, 0)",
        "print(0 in os.getresuid() + os.getresgid() + tuple(os.getgroups()))",
    ]
    r = h.run(cells, expect=["forbidden"] * 4 + ["ok"])
    assert r.out[4].stdout == "False\n"


@pytest.mark.timeout(60)
def test_kill_minus_one_spares_host_processes(h):
    # A host process with the sandbox's own uid: only a PID namespace keeps kill(-1) off it.
    canary = subprocess.Popen(["sleep", "30"], user=h.uid, group=h.uid, extra_groups=[])
    try:
        kill_all = cell(
            """
            import os, signal
            try:
                os.kill(-1, signal.SIGKILL)  # everything this uid may signal, except itself
            except ProcessLookupError:
                print('nothing to kill')
            print('survived')
            """
        )
        cells = [kill_all, "print('after')"]
        r = h.run(cells, expect=["forbidden", "ok"], exclude_pids=frozenset({canary.pid}))
        alive = canary.poll() is None
    finally:
        canary.kill()
        canary.wait()
    if not alive:
        pytest.fail("ESCAPE: kill(-1) in the cell killed a host process of the same uid")
    assert r.out[0].stdout.endswith("survived\n")


@pytest.mark.timeout(60)
def test_kill_the_parent_and_init(h):
    cells = [
        "import os\nos.kill(os.getppid(), 9)",
        "os.kill(1, 9)",
        f"os.kill({HOST_PID}, 9)",  # the test process, by its host pid
        "import signal\nos.kill(os.getppid(), signal.SIGSTOP)",
        "print('alive')",
    ]
    r = h.run(cells, expect=["forbidden"] * 4 + ["ok"])
    assert r.out[4].stdout == "alive\n"


@pytest.mark.timeout(60)
def test_orphaned_background_processes(h):
    double_fork = cell(
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.closerange(3, 4096)  # let go of the sandbox pipes too
                time.sleep(60)
            os._exit(0)
        os.wait()
        print('daemonized')
        """
    )
    cells = [
        double_fork,
        "import subprocess\nsubprocess.Popen(['sleep', '60'], start_new_session=True, close_fds=True,\n"
        "    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\nprint('spawned')",
        "import os\nos.system('nohup sleep 61 > /dev/null 2>&1 &')\nprint('backgrounded')",
    ]
    r = h.run(cells, expect=["forbidden", "forbidden", "forbidden"])
    assert r.elapsed_s < 3 * LIMITS.cell_timeout_s  # nobody waited for the sleepers


@pytest.mark.timeout(60)
def test_ctypes_namespace_calls(h):
    in_worker = cell(
        """
        import ctypes, json, os
        libc = ctypes.CDLL(None, use_errno=True)
        res = {}
        def call(name, *args):
            rc = getattr(libc, name)(*args)
            res[name + str(len(res))] = rc if rc == 0 else os.strerror(ctypes.get_errno())
        try:
            call('setns', os.open('/proc/1/ns/mnt', os.O_RDONLY), 0)
        except OSError as e:
            res['open /proc/1/ns/mnt'] = type(e).__name__
        call('setns', os.open('/proc/self/ns/net', os.O_RDONLY), 0)
        call('unshare', 0x40000000)  # CLONE_NEWNET
        call('unshare', 0x00020000)  # CLONE_NEWNS
        print('RESULT', json.dumps(res))
        """
    )
    # unshare a user + mount namespace in a (single-threaded) child, then try to uncover the
    # host's /tmp behind the sandbox's private one
    userns = cell(
        """
        import ctypes, json, os
        libc = ctypes.CDLL(None, use_errno=True)
        r, w = os.pipe()
        if os.fork() == 0:
            res = {}
            def step(name, rc):
                res[name] = rc if rc == 0 else os.strerror(ctypes.get_errno())
            step('unshare', libc.unshare(0x10000000 | 0x00020000))  # CLONE_NEWUSER | CLONE_NEWNS
            for d in ('x', 'y'):
                os.makedirs(d, exist_ok=True)
            step('bind_root', libc.mount(b'/', b'x', None, 0x1000, None))  # MS_BIND, not recursive
            step('rbind_root', libc.mount(b'/', b'y', None, 0x1000 | 0x4000, None))
            step('umount_copy', libc.umount2(b'y/tmp', 2))
            step('umount_tmp', libc.umount2(b'/tmp', 2))
            step('remount_rw', libc.mount(None, b'/', None, 32, None))
            seen = []
            for view in ('/tmp', 'x/tmp', 'y/tmp'):
                try:
                    seen += os.listdir(view)
                except OSError:
                    pass
            res['host_tmp_visible'] = '$marker' in seen
            os.write(w, json.dumps(res).encode())
            os._exit(0)
        os.wait()
        print('RESULT', os.read(r, 65536).decode())
        """,
        marker=os.path.basename(h.host.tmp_marker_dir),
    )
    r = h.run([in_worker, userns], expect=["forbidden", "forbidden"])
    worker = json.loads(r.out[0].stdout.split("RESULT", 1)[1])
    child = json.loads(r.out[1].stdout.split("RESULT", 1)[1])
    assert 0 not in worker.values(), worker
    assert child["host_tmp_visible"] is False, child
    for step in ("bind_root", "umount_copy", "umount_tmp", "remount_rw"):
        assert child[step] != 0, child
    if child["unshare"] == 0:
        h.breached(
            "seccomp",
            "LIMIT: unshare(CLONE_NEWUSER|CLONE_NEWNS) succeeded in the cell (no seccomp): it gets "
            f"root in a new user namespace (kernel attack surface); the host mounts stayed locked: {child}",
        )


@pytest.mark.timeout(60)
def test_execv_a_shell(h):
    shell = (
        f"id -u; echo pwned > /etc/{TOKEN}; echo pwned > /tmp/{TOKEN}; "
        f"cat /etc/shadow; cat {h.host.secret_file}; echo done"
    )
    cells = [f"import os\nos.execv('/bin/sh', ['sh', '-c', {shell!r}])", "print('never')"]
    r = h.run(cells, expect=[("killed", "forbidden"), ("skipped", "ok")])
    if r.out[0].status == "killed":  # the shell replaced the worker, ran unprivileged and exited
        assert "exited with code" in r.out[0].error
        assert f"\n{h.uid}\n" in r.out[0].error  # `id -u` in the sandbox log tail
        assert "Permission denied" in r.out[0].error


@pytest.mark.timeout(60)
def test_subprocess(h):
    run = cell(
        """
        import subprocess
        p = subprocess.run(['sh', '-c', 'id -u; cat /etc/shadow; touch /etc/$token; ls /root'],
                           capture_output=True, text=True)
        print(p.returncode != 0, p.stdout, p.stderr)
        """,
        token=TOKEN,
    )
    r = h.run([run, "print('after')"], expect=["forbidden", "ok"])
    assert "subprocess.Popen" in r.out[0].error
    if r.out[0].stdout.startswith("True"):
        assert "Permission denied" in r.out[0].stdout and f"{h.uid}\n" in r.out[0].stdout


# --------------------------------------------------------------------------------------------
# decompression bombs
# --------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_png_bomb_as_input(h):
    assert len(BOMB_PNG) < 100_000
    cells = [
        "print(image, image_paths)",
        "from PIL import Image\nImage.MAX_IMAGE_PIXELS = None\nim = Image.open(image_paths[0])\nprint(im.size)\nim.convert('RGB')",
        "import cv2\ncv2.imread(image_paths[0])",
        "print('after')",
    ]
    # decoding 400 Mpx hits the memory limit, or on a loaded machine the 3 s wall clock first:
    # contained either way (a timeout stops the sandbox, so the later cells are skipped)
    r = h.run(cells, [InputImage("bomb.png", BOMB_PNG)],
              expect=["ok", ("memory", "timeout"), ("error", "skipped"), ("ok", "skipped")])
    assert r.out[0].stdout == "None ['input_0.png']\n"  # refused at preload, not decoded
    if r.out[1].status == "memory":
        assert r.out[1].stdout == "(20000, 20000)\n"
        assert r.out[2].status == "error" and "CV_IO_MAX_IMAGE_PIXELS" in r.out[2].error
        assert r.out[3].status == "ok"
    else:
        assert [o.status for o in r.out[2:]] == ["skipped", "skipped"]


@pytest.mark.timeout(60)
def test_png_bomb_made_in_the_cell(h):
    cells = [
        # 225 Mpx: past PIL's refusal threshold (2 x 89 Mpx), ~30 KB on disk, quick to write
        "from PIL import Image\nImage.new('1', (15000, 15000)).save('bomb.png')\nprint('saved')",
        "Image.open('bomb.png').load()",
        "import numpy as np\nImage.MAX_IMAGE_PIXELS = None\n"
        "pixels = np.asarray(Image.open('bomb.png').convert('L'), dtype=np.float64)",
        "print('after')",
    ]
    r = h.run(cells, expect=["ok", "error", "memory", "ok"])
    assert r.out[0].images == [] and "not kept" in r.out[0].stdout
    assert "DecompressionBombError" in r.out[1].error


@pytest.mark.timeout(60)
def test_png_bomb_smuggled_to_the_parent(h):
    smuggle = cell(
        """
        import sys
        from PIL import Image
        for module in list(sys.modules.values()):
            if hasattr(module, 'MAX_CAPTURE_PIXELS'):
                module.MAX_CAPTURE_PIXELS = 10**12  # the runner's own capture guard
        Image.MAX_IMAGE_PIXELS = None
        Image.new('1', (15000, 15000)).save('bomb.png')
        """
    )
    r = h.run([smuggle, "print('after')"], expect=[None, "ok"], images_checked_by_test=True)
    sizes = [png_dimensions(data) for o in r.out for _, data in o.images]
    # the parent's own check of the IHDR dimensions, whatever the cell switched off in the child
    bombs = [(w, ht) for w, ht in sizes if w * ht > 64 * 1024 * 1024]
    assert not bombs, (
        f"LIMIT: the parent returned decompression-bomb PNGs {bombs} to the pipeline: the in-child "
        "pixel limit was switched off by the cell and the parent did not check the IHDR dimensions"
    )
    assert r.out[0].status in ("ok", "error", "forbidden")


# --------------------------------------------------------------------------------------------
# tampering with the runner and the reporting
# --------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_proc_mem_writes(h):
    self_write = cell(
        """
        import numpy as np
        a = np.zeros(16, np.uint8)
        with open('/proc/self/mem', 'r+b', buffering=0) as mem:
            mem.seek(a.__array_interface__['data'][0])
            mem.write(b'\\x07' * 16)
        print(int(a.sum()))
        """
    )
    cells = [
        self_write,
        "open('/proc/1/mem', 'r+b')",
        f"open('/proc/{HOST_PID}/mem', 'rb')",
        "print('after')",
    ]
    r = h.run(cells, expect=["forbidden", "forbidden", ("error", "forbidden"), "ok"])
    assert "PermissionError" in r.out[1].error or "Read-only file system" in r.out[1].error


@pytest.mark.timeout(60)
def test_fake_status_by_patching_the_send_function(h):
    """The cell rewrites the runner's ``send_message`` so that its refused read of /etc/shadow is
    reported "ok" instead of "forbidden".

    Known limit of the status reporting, not an escape: the status of a cell the kernel refused is
    reported by the process that ran the cell, so the cell can fake "ok". What holds, and is
    asserted: the read itself failed (the kernel's permission check, not the report), no shadow
    line reached any output, the statuses the *parent* decides (killed, timeout) cannot be faked,
    and the patch does not outlive the trajectory (the harness's benign replay that follows)."""
    patch = cell(
        """
        import sys
        for runner in [m for m in list(sys.modules.values()) if callable(getattr(m, 'send_message', None))]:
            def send_message(fd, obj, real_send=runner.send_message):
                if obj.get('type') == 'cell':
                    obj = dict(obj, status='ok', error='')
                real_send(fd, obj)
            runner.send_message = send_message
        try:
            open('/etc/shadow').read()
        except OSError as e:
            print('denied', type(e).__name__)
        """
    )
    suicide = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"  # judged by the parent
    r = h.run([patch, suicide], expect=[None, "killed"])
    assert r.out[0].stdout == "denied PermissionError\n"  # the read itself failed
    assert r.out[0].status in ("forbidden", "ok")  # "ok": the faked report (docstring)
    # cell 1's "killed" (checked by h.run) is decided by the parent: the patched sender cannot change it


@pytest.mark.timeout(60)
def test_fake_status_by_silencing_the_policy_monitor(h):
    """The cell switches off the in-process audit-hook monitor (found through gc), then tries
    setuid(0), reading /etc/shadow and writing to /etc: the three attempts are reported "ok".

    Known limit of the status reporting, not an escape: the monitor only *reports* attempts, and it
    runs in the process the cell controls. The kernel layers (unprivileged uid, no_new_privs,
    read-only filesystem) refused all three, and that is asserted: each attempt raised, the ids
    are still the sandbox's, /etc has no new file, no shadow line reached any output."""
    silence = cell(
        """
        import gc, os
        for obj in gc.get_objects():
            if type(obj).__name__ == 'PolicyMonitor':
                type(obj).__call__ = lambda self, event, args: None
        for attempt in (lambda: os.setuid(0), lambda: open('/etc/shadow').read(),
                        lambda: open('/etc/$token', 'w')):
            try:
                attempt()
            except OSError as e:
                print('denied', type(e).__name__)
        print('ids', *os.getresuid(), *os.getresgid())
        """,
        token=TOKEN,
    )
    suicide = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"  # judged by the parent
    r = h.run([silence, suicide], expect=[None, "killed"])
    assert r.out[0].stdout.count("denied") == 3, r.out[0]
    assert f"ids {' '.join([str(h.uid)] * 6)}\n" in r.out[0].stdout, r.out[0].stdout  # privileges unchanged
    assert not os.path.exists(f"/etc/{TOKEN}")
    assert r.out[0].status in ("forbidden", "ok")  # "ok": the faked report (docstring)


@pytest.mark.timeout(60)
def test_builtins_and_json_sabotage(h):
    sabotage = cell(
        """
        import builtins, sys
        builtins.__import__ = lambda *a, **k: 1 / 0
        builtins.open = None
        sys.modules['json'].dumps = None
        """
    )
    r = h.run([sabotage, "print('after')"], expect=[("killed", "error"), ("skipped", "ok")])
    assert r.out[0].status != "ok"


@pytest.mark.timeout(60)
def test_close_the_pipes_and_hang(h):
    hang = cell(
        """
        import gc, os, time
        for obj in gc.get_objects():
            if type(obj).__name__ == 'Worker':
                os.close(obj.resp_fd)
                os.close(obj.req_fd)
        time.sleep(100)
        """
    )
    r = h.run([hang, "print('never')"], expect=[("killed", "timeout"), "skipped"])
    assert r.elapsed_s < LIMITS.cell_timeout_s + WALL_SLACK_S
