"""One writer per OUT, and atomic publishing of a run's results.

Layout of an OUT (every reader goes through the two fixed links, so nothing else changes)::

    OUT/.lock                      held (flock) by the run writing into OUT
    OUT/versions/<run_id>/         one complete result: shards/ and the manifest.json describing them
    OUT/current -> versions/<id>   the published version (a relative symlink)
    OUT/shards -> current/shards
    OUT/manifest.json -> current/manifest.json
    OUT/.staging-<run_id>/         the run being written (never read)

Publishing = renaming the finished staging folder into ``versions/`` (one rename on one file
system) and then replacing the ``current`` link with ``os.replace`` (atomic): at every moment OUT
shows one complete state whose manifest describes exactly its shards, whatever instant the driver
is killed at. The previous version stays until the next publish (a reader in the middle of a
query keeps its files); older ones are swept.

The lock is an ``flock`` on ``OUT/.lock``: the kernel drops it when the holding process dies, so a
killed run never leaves OUT locked. Staging folders left by killed or interrupted runs are swept
by the next run that takes the lock (they are never read or counted).

An OUT written before this layout (a real ``shards/`` folder and ``manifest.json`` file) is
moved into ``versions/legacy-<mtime>`` the first time a run publishes into it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from pipeline.manifest import MANIFEST
from pipeline.tools.shards import SHARDS_DIR

LOCK_FILE = ".lock"
VERSIONS_DIR = "versions"
CURRENT = "current"
STAGING_PREFIX = ".staging-"
KEEP_VERSIONS = 2  # the published one and the one before it (a reader may still be on it)


class OutLockedError(RuntimeError):
    """Another run holds OUT's lock; the message names it and says what to do."""


class WriteFailedError(RuntimeError):
    """Writing the results failed (e.g. the disk is full); OUT still holds the previous results."""

    def __init__(self, message: str, path: str | None):
        super().__init__(message)
        self.path = path


class OutLock:
    """Exclusive, non-blocking lock on OUT for the duration of a run (context manager)."""

    def __init__(self, out_dir: Path, run_id: str):
        self.path = Path(out_dir) / LOCK_FILE
        self.run_id = run_id
        self._fd: int | None = None

    def __enter__(self) -> OutLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = _read_holder(fd)
            os.close(fd)
            who = (f"run {holder.get('run_id')} (pid {holder.get('pid')} on {holder.get('host')}, "
                   f"started {holder.get('started_at')})") if holder else "another run"
            raise OutLockedError(
                f"{self.path.parent} is in use by {who}: only one run may write into an OUT at a time. "
                "Wait for it to finish, or pass another --out."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({
            "run_id": self.run_id, "pid": os.getpid(), "host": socket.gethostname(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def has_results(out_dir: Path) -> bool:
    """OUT already shows a published result (either layout)."""
    return (Path(out_dir) / SHARDS_DIR).is_dir()


def sweep_leftovers(out_dir: Path, keep: Path | None = None) -> list[tuple[Path, int]]:
    """Remove what killed or interrupted runs left (staging folders other than ``keep``, the one
    being resumed; versions that were renamed in but never published). Call with the lock held.
    Returns (path, bytes) of what was removed."""
    out_dir = Path(out_dir)
    current = _current_version(out_dir)
    removed = []
    candidates = [p for p in out_dir.glob(f"{STAGING_PREFIX}*") if keep is None or p != keep]
    versions = _versions(out_dir)
    if current is not None and current in versions:
        # a version newer than the published one was renamed in by a run killed before its link swap
        candidates += versions[versions.index(current) + 1:]
    for path in candidates:
        size = _du(path)
        shutil.rmtree(path, ignore_errors=True)
        removed.append((path, size))
    return removed


RESUME_FILE = "resume.json"  # in a staging folder: what the run is (fingerprint) and its plan's size
UNITS_DIR = "units"  # in a staging folder: one folder per committed unit of work


def write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def resume_fingerprint(files: list[Path], cfg: Any, limit: int | None, fmt: str | None, benchmark: Path | None,
                       recompute: str | None, previous: dict[str, Any] | None) -> str:
    """What makes two runs the same run: the inputs (path, size, mtime), the settings and options,
    and the OUT version they start from. A leftover staging with this fingerprint is resumed."""
    def stat(p: Path) -> list:
        st = Path(p).stat()
        return [str(p), st.st_size, st.st_mtime_ns]

    blob = json.dumps({
        "files": [stat(f) for f in files], "config": cfg.config_hash(), "limit": limit, "format": fmt,
        "benchmark": stat(benchmark) if benchmark else None, "recompute": recompute,
        "previous": (previous or {}).get("run_id"),
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def find_resumable(out_dir: Path, fingerprint: str) -> Path | None:
    """The staging folder a killed or interrupted run with this fingerprint left, if any."""
    for staging in sorted(Path(out_dir).glob(f"{STAGING_PREFIX}*")):
        try:
            if json.loads((staging / RESUME_FILE).read_text()).get("fingerprint") == fingerprint:
                return staging
        except (OSError, ValueError):
            continue
    return None


class Units:
    """Committed units of a run's work under ``staging/units``: a unit is written into a
    temporary folder and renamed when complete, so it is either wholly there or absent."""

    def __init__(self, staging: Path):
        self.root = Path(staging) / UNITS_DIR
        self.root.mkdir(parents=True, exist_ok=True)

    def done(self, name: str) -> bool:
        return (self.root / name).is_dir()

    def commit(self, name: str, write: Any) -> None:
        """``write(folder)`` fills a fresh temporary folder; then it becomes the unit ``name``."""
        if self.done(name):
            return
        tmp = self.root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp)
        os.rename(tmp, self.root / name)
        _fsync_dir(self.root)

    def rows(self, name: str) -> int:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in (self.root / name).rglob("*.parquet")) \
            if self.done(name) else 0

    def link_into(self, shards: Path) -> None:
        """Hard-link every committed unit's shard files into ``shards`` (emptied first: a run
        killed after this step redoes it from the units)."""
        shutil.rmtree(shards, ignore_errors=True)
        shards.mkdir(parents=True)
        for unit in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in unit.rglob("*.parquet"):
                dst = shards / f.relative_to(unit)
                dst.parent.mkdir(parents=True, exist_ok=True)
                if dst.exists():
                    dst = dst.with_name(f"{unit.name}-{dst.name}")
                os.link(f, dst)


def publish(out_dir: Path, staging: Path, run_id: str) -> Path:
    """Make ``staging`` (holding shards/ and manifest.json) the published version of OUT,
    atomically; returns the version folder."""
    out_dir = Path(out_dir)
    _adopt_legacy_layout(out_dir)
    versions = out_dir / VERSIONS_DIR
    versions.mkdir(exist_ok=True)
    target = versions / run_id
    os.rename(staging, target)
    _fsync_dir(versions)
    link = out_dir / f".{CURRENT}-{run_id}.tmp"
    if link.is_symlink():
        link.unlink()
    os.symlink(f"{VERSIONS_DIR}/{run_id}", link)
    os.replace(link, out_dir / CURRENT)  # the publish: one atomic rename
    _fsync_dir(out_dir)
    _ensure_link(out_dir / SHARDS_DIR, f"{CURRENT}/{SHARDS_DIR}")
    _ensure_link(out_dir / MANIFEST, f"{CURRENT}/{MANIFEST}")
    for old in _versions(out_dir)[:-KEEP_VERSIONS]:
        if old.name != run_id:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _versions(out_dir: Path) -> list[Path]:
    """Version folders, oldest first: legacy first, then by the time each was renamed into
    versions/ (the inode change time; run ids alone do not order runs started in one second)."""
    root = Path(out_dir) / VERSIONS_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir()),
                  key=lambda p: (not p.name.startswith("legacy-"), p.stat().st_ctime_ns, p.name))


def _current_version(out_dir: Path) -> Path | None:
    link = Path(out_dir) / CURRENT
    if not link.is_symlink():
        return None
    return Path(out_dir) / VERSIONS_DIR / Path(os.readlink(link)).name


def _ensure_link(path: Path, target: str) -> None:
    if path.is_symlink() and os.readlink(path) == target:
        return
    tmp = path.with_name(f".{path.name}.link.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, path)


def _adopt_legacy_layout(out_dir: Path) -> None:
    """Move a pre-versioning OUT (real shards/ folder, manifest.json file) into versions/."""
    shards, manifest = out_dir / SHARDS_DIR, out_dir / MANIFEST
    if shards.is_symlink() or not shards.is_dir():
        return
    legacy = out_dir / VERSIONS_DIR / f"legacy-{int(shards.stat().st_mtime)}"
    legacy.mkdir(parents=True, exist_ok=True)
    if manifest.is_file() and not manifest.is_symlink():
        os.rename(manifest, legacy / MANIFEST)
    os.rename(shards, legacy / SHARDS_DIR)
    _ensure_link(out_dir / CURRENT, f"{VERSIONS_DIR}/{legacy.name}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def write_failure(exc: BaseException, staging: Path) -> WriteFailedError | None:
    """A WriteFailedError for an exception whose cause (through Ray's wrappers and chained
    exceptions) is an OSError on write: disk full, quota, read-only file system, I/O error."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
            path = e.filename or str(staging)
            what = "the curated shards" if SHARDS_DIR in str(path) or path == str(staging) else "run files"
            return WriteFailedError(
                f"{os.strerror(e.errno).lower()} while writing {what} to {path}; the previous results in "
                f"{staging.parent} are intact. Free space (or fix the file system) and rerun the same command.",
                str(path),
            )
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    text = str(exc)
    if "[Errno 28]" in text or "No space left on device" in text:  # a wrapper that kept only the text
        return WriteFailedError(
            f"no space left on device while writing the curated shards under {staging}; the previous results "
            f"in {staging.parent} are intact. Free space and rerun the same command.", str(staging))
    return None
