"""Host-side observers for the sandbox attack suite (tests/test_sandbox_attacks.py).

Everything here runs in the test process (root, host namespaces) and only *looks*: which
processes run as the sandbox uid, what appeared in sensitive directories, whether guarded files
or the mount table changed, how much memory the sandbox's processes use. Nothing here executes
model code.
"""

from __future__ import annotations

import contextlib
import os
import re
import string
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# Every file name an attack tries to create contains this, so a leak is easy to spot on the host.
ATTACK_MARK = "twi-attack"
# Bait the suite itself puts on the host (possibly by a concurrent run of the suite).
FIXTURE_MARK = "twi-fixture-"

# An /etc/shadow line (name:hash:lastchg:min:max:warn:...): never printed by a passwd line.
SHADOW_LINE = re.compile(r"^[a-z_][a-z0-9_-]*:[^:\n]*:\d*:\d*:\d*:\d*:[^:\n]*:[^:\n]*:", re.M)


def cell(src: str, **subs: object) -> str:
    """Dedent ``src`` and substitute ``$name`` placeholders (Python code rarely uses ``$``)."""
    return string.Template(textwrap.dedent(src).strip("\n")).substitute({k: str(v) for k, v in subs.items()})


# --------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Proc:
    pid: int
    comm: str
    state: str
    pgid: int
    sid: int
    uids: tuple[int, ...]  # real, effective, saved, filesystem


def processes() -> list[Proc]:
    """Every live (non-zombie) process visible from the host PID namespace."""
    rows = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{name}/status") as fh:
                uid_line = next(line for line in fh if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] in ("Z", "X"):
            continue
        uids = tuple(int(v) for v in uid_line.split()[1:5])
        rows.append(Proc(int(name), comm, fields[0], int(fields[2]), int(fields[3]), uids))
    return rows


def sandbox_processes(uids: set[int], sid: int | None = None, exclude: set[int] | frozenset = frozenset()):
    """Processes holding a sandbox uid (any of real/effective/saved/fs), or in the sandbox's session
    or process group ``sid`` (the level-1 runner's pid), minus ``exclude`` (e.g. a canary)."""
    found = []
    for p in processes():
        if p.pid in exclude:
            continue
        if set(p.uids) & uids or (sid is not None and sid in (p.pgid, p.sid)):
            found.append(p)
    return found


def leftovers(uids: set[int], sid: int | None, exclude=frozenset(), grace_s: float = 3.0) -> list[Proc]:
    """Sandbox processes still alive ``grace_s`` after replay() returned (PID namespace teardown is async)."""
    deadline = time.monotonic() + grace_s
    while True:
        left = sandbox_processes(uids, sid, exclude)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


class PeakMemory:
    """Samples the summed PSS (shared pages split between their users, so forked children are not
    counted twice) of every process running as one of ``uids`` (a context manager)."""

    def __init__(self, uids: set[int], period_s: float = 0.03) -> None:
        self.uids = uids
        self.period_s = period_s
        self.peak_bytes = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[int, int]:
        total = count = 0
        for p in processes():
            if p.uids[0] not in self.uids:
                continue
            try:
                with open(f"/proc/{p.pid}/smaps_rollup") as fh:
                    pss = re.search(r"^Pss:\s+(\d+) kB", fh.read(), re.M)
            except OSError:
                continue
            count += 1
            total += int(pss.group(1)) * 1024 if pss else 0
        return total, count

    def _run(self) -> None:
        while not self._stop.is_set():
            total, count = self._sample()
            self.peak_bytes = max(self.peak_bytes, total)
            self.peak_processes = max(self.peak_processes, count)
            self._stop.wait(self.period_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# --------------------------------------------------------------------------------------------
# host filesystem and mounts
# --------------------------------------------------------------------------------------------
# New entries of any kind are a failure here: nothing else on the machine writes to these
# directories while the suite runs.
STRICT_DIRS = (
    "/etc",
    "/etc/profile.d",
    "/usr",
    "/usr/bin",
    "/usr/local",
    "/usr/local/bin",
    "/usr/local/lib",
    "/var/tmp",
)
# Shared directories other processes (other test runs, Ray, the lead) write to concurrently:
# only entries owned by a sandbox uid or named like an attack artefact count.
# (The project dir and the folder holding it are added by the test module.)
SHARED_DIRS = ("/", "/root", "/tmp", "/dev/shm", "/run", "/var", "/mnt", "/opt", "/srv", "/home")
# Existing files whose size and mtime must not change.
GUARDED_FILES = (
    "/etc/passwd",
    "/etc/shadow",
    "/etc/hosts",
    "/etc/profile",
    "/etc/bash.bashrc",
    "/root/.bashrc",
    "/root/.profile",
)


@dataclass
class HostSnapshot:
    listings: dict[str, dict[str, int]]  # dir -> {entry name: owner uid}
    stats: dict[str, tuple[int, int]]  # guarded file -> (size, mtime_ns)
    mounts: frozenset[str]  # mount points of the host mount namespace
    marked_text: dict[str, bool]  # project text file -> contains ATTACK_MARK


def _listing(path: str) -> dict[str, int]:
    entries: dict[str, int] = {}
    with contextlib.suppress(OSError), os.scandir(path) as it:
        for entry in it:
            with contextlib.suppress(OSError):
                entries[entry.name] = entry.stat(follow_symlinks=False).st_uid
    return entries


def _mount_points() -> frozenset[str]:
    with open("/proc/self/mountinfo") as fh:
        return frozenset(line.split()[4] for line in fh)


def snapshot(shared_dirs: tuple[str, ...], text_files: tuple[str, ...]) -> HostSnapshot:
    listings = {d: _listing(d) for d in (*STRICT_DIRS, *SHARED_DIRS, *shared_dirs)}
    stats = {}
    for path in GUARDED_FILES:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            stats[path] = (st.st_size, st.st_mtime_ns)
    marked = {}
    for path in text_files:
        with contextlib.suppress(OSError):
            marked[path] = ATTACK_MARK in Path(path).read_text(errors="replace")
    return HostSnapshot(listings, stats, _mount_points(), marked)


def host_changes(before: HostSnapshot, after: HostSnapshot, uids: set[int]) -> list[str]:
    """Everything the sandbox may have done to the host between two snapshots."""
    problems = []
    for d, entries in after.listings.items():
        old = before.listings.get(d, {})
        for name, owner in sorted(entries.items()):
            if d in STRICT_DIRS and name not in old and not name.startswith(FIXTURE_MARK):
                problems.append(f"new entry {os.path.join(d, name)} (uid {owner})")
            elif owner in uids or (ATTACK_MARK in name and name not in old):
                problems.append(f"{os.path.join(d, name)} owned by sandbox uid {owner} or attack-named")
    for path, stat in before.stats.items():
        if after.stats.get(path) != stat:
            problems.append(f"{path} changed: {stat} -> {after.stats.get(path)}")
    for mount in sorted(after.mounts - before.mounts):
        if not mount.startswith(("/sys/", "/proc/")):  # cgroup set-up by the sandbox parent itself
            problems.append(f"new host mount at {mount}")
    for path, marked in after.marked_text.items():
        if marked and not before.marked_text.get(path, False):
            problems.append(f"{path} now contains {ATTACK_MARK!r}")
    return problems


def png_dimensions(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, without decoding the pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


class MemoryScanner:
    """Searches the writable memory of every sandbox-uid process for ``needle`` (a context manager).

    Runs as root from the host, so it sees what a bug in the sandbox could expose even when the
    cell itself cannot read its own /proc/self/mem (the worker is not dumpable after the uid drop).
    """

    def __init__(self, uids: set[int], needle: bytes) -> None:
        self.uids = uids
        self.needle = needle
        self.scanned: dict[int, int] = {}  # pid -> bytes scanned
        self.hits: list[tuple[int, str]] = []  # (pid, mapping)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _scan(self, pid: int) -> None:
        chunk = 16 << 20
        total = 0
        try:
            with open(f"/proc/{pid}/maps") as fh:
                regions = [line.split() for line in fh]
            with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
                for fields in regions:
                    if not fields[1].startswith("rw"):
                        continue
                    lo, hi = (int(x, 16) for x in fields[0].split("-"))
                    for pos in range(lo, hi, chunk):
                        try:
                            mem.seek(pos)
                            data = mem.read(min(hi - pos, chunk + len(self.needle)))
                        except (OSError, OverflowError, ValueError):
                            break
                        total += len(data)
                        if self.needle in data:
                            self.hits.append((pid, fields[5] if len(fields) > 5 else "[anon]"))
        except OSError:
            pass
        self.scanned[pid] = total

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in processes():
                if p.pid not in self.scanned and set(p.uids) & self.uids:
                    self._stop.wait(0.3)  # let it finish starting
                    self._scan(p.pid)
            self._stop.wait(0.05)

    def __enter__(self) -> MemoryScanner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


class DiskUse:
    """Samples the free space of the filesystem holding ``path``; ``peak_bytes`` = most consumed."""

    def __init__(self, path: str, period_s: float = 0.02) -> None:
        self.path = path
        self.period_s = period_s
        self.start_free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
        self.min_free = self.start_free
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def peak_bytes(self) -> int:
        return max(0, self.start_free - self.min_free)

    def _run(self) -> None:
        while not self._stop.is_set():
            st = os.statvfs(self.path)
            self.min_free = min(self.min_free, st.f_bavail * st.f_frsize)
            self._stop.wait(self.period_s)

    def __enter__(self) -> DiskUse:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
