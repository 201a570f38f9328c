"""The sandbox child: isolates itself, then replays model-written cells sent by the parent.

Started by :class:`pipeline.sandbox.process.ProcessSandbox` as
``python -s -P -B runner.py CONFIG_JSON`` with a clean environment, as its own session leader.
The file is self-contained (the standard library only at module level) because ``-P`` keeps the
script's directory off ``sys.path``; the image libraries are pre-imported by the worker before it
drops privileges.

Process tree when a PID namespace is available::

    outer   host pid, session leader, root   unshare(NET|PID|NS); read-only mounts, private /tmp;
                                             waits for init and mirrors its exit code
      init  pid 1 of the new PID namespace   mounts a private /proc; reaps orphans; exits when the
                                             worker exits, which makes the kernel SIGKILL every
                                             process left in the namespace
        worker  pid 2, unprivileged uid      rlimits, pre-imports, drop privileges, runs the cells

Without a PID namespace the outer process is the worker. Every layer that the kernel refuses is
reported as False in the ready message instead of failing the start; the parent decides.

Wire protocol, both directions: 4-byte big-endian length, then a UTF-8 JSON object.
  parent -> worker  {"op": "run", "index": i, "code": "..."} | {"op": "exit"}
  worker -> parent  {"type": "ready", "layers": {...}, "notes": [...], "startup_ms": ...}
                    {"type": "cell", "index": i, "status": "ok|error|memory|forbidden",
                     "stdout": "...", "error": "...", "images": [{"name": "...", "png": "<base64>"}]}
The parent never unpickles anything from here and validates every message.

Each isolation step is a separate function (``set_parent_death_signal``, ``ensure_new_session``,
``unshare_namespaces``, ``make_filesystem_read_only``, ``mount_private_tmp``,
``mount_private_proc``, ``apply_rlimits``, ``set_no_new_privs``, ``preimport_libraries``,
``expose_unreadable_sys_path``, ``drop_privileges``) so the later zygote can reuse them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import resource
import signal
import struct
import sys
import time

CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
PRIVATE_WORK_DIR = "/tmp/work"  # the work dir as the cells see it when /tmp is private
PRIVATE_CONFIG_DIR = "/tmp/.mplconfig"
SYS_MOUNT_SETATTR = 442  # same number on every architecture (unified syscall table, Linux >= 5.12)
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
ADDR_NO_RANDOMIZE = 0x0040000

EXIT_ORPHANED = 70  # the parent died before we could arm the parent-death signal
EXIT_SETUP_FAILED = 71  # an isolation step failed before any model code ran
EXIT_PROTOCOL = 72  # the request pipe broke or carried garbage

HEADER = struct.Struct(">I")
MAX_REQUEST_BYTES = 64 * 1024 * 1024

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PNG_MODES = ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")
MAX_CAPTURE_PIXELS = 64 * 1024 * 1024
MAX_SCANNED_FILES = 20000
STDERR_MARKER = "\n[stderr]\n"

# Libraries model code uses. They are imported before the privilege drop: the interpreter lives
# under /root (mode 0700), which the unprivileged uid cannot traverse.
PRELOAD_MODULES = (
    # standard library
    "abc", "argparse", "array", "base64", "binascii", "bisect", "cmath", "collections",
    "collections.abc", "colorsys", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "encodings.idna", "enum", "errno", "fnmatch", "fractions", "functools", "glob", "gzip", "hashlib",
    "heapq", "http.client", "inspect", "io", "itertools", "json", "linecache", "locale", "math",
    "numbers", "operator", "pathlib", "pickle", "platform", "pprint", "queue", "random", "re",
    "shutil", "signal", "socket", "ssl", "statistics", "string", "struct", "subprocess", "tempfile",
    "textwrap", "threading", "time", "traceback", "typing", "unicodedata", "urllib.parse",
    "urllib.request", "uuid", "warnings", "zipfile", "zlib",
    # image / numeric stack
    "numpy", "numpy.linalg", "numpy.fft", "numpy.random", "cv2",
    "PIL", "PIL.Image", "PIL.ImageChops", "PIL.ImageColor", "PIL.ImageDraw", "PIL.ImageEnhance",
    "PIL.ImageFilter", "PIL.ImageFont", "PIL.ImageOps", "PIL.ImageStat",
    "matplotlib", "matplotlib.pyplot", "matplotlib.patches", "matplotlib.colors", "matplotlib.cm",
    "scipy", "scipy.ndimage",
    "skimage", "skimage.filters", "skimage.feature", "skimage.measure", "skimage.morphology",
    "skimage.exposure", "skimage.transform", "skimage.color", "skimage.segmentation", "skimage.io",
    "skimage.util", "skimage.draw",
)  # fmt: skip

_libc: ctypes.CDLL | None = None


# --------------------------------------------------------------------------------------------
# isolation steps
# --------------------------------------------------------------------------------------------
def _libc_call(name: str, *args: int) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(_libc, name)
    fn.restype = ctypes.c_long
    rc = fn(*[ctypes.c_ulong(a) for a in args])
    if rc == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return rc


def disable_aslr_and_reexec() -> None:
    """Re-exec once with ADDR_NO_RANDOMIZE so object addresses in printed reprs are reproducible."""
    current = _libc_call("personality", 0xFFFFFFFF)
    if current & ADDR_NO_RANDOMIZE:
        return
    _libc_call("personality", current | ADDR_NO_RANDOMIZE)
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def set_parent_death_signal(expected_ppid: int | None) -> bool:
    """SIGKILL this process when its parent dies; exit at once if the parent is already gone."""
    _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if expected_ppid is not None and os.getppid() != expected_ppid:
        os._exit(EXIT_ORPHANED)
    return True


def ensure_new_session() -> bool:
    """Own session and process group, so the parent can kill the whole group with one killpg."""
    if os.getsid(0) != os.getpid():
        os.setsid()
    return os.getsid(0) == os.getpid() and os.getpgid(0) == os.getpid()


def unshare_namespaces(pid: bool = True, mount: bool = True) -> dict[str, bool]:
    """New network namespace (only a DOWN loopback), PID namespace and mount namespace.

    Each namespace is unshared on its own so a missing one does not cost the others. Root
    unshares directly; an unprivileged caller first enters a new user namespace. The PID
    namespace takes effect for the children forked after this call.
    """
    result = {
        "user_namespace": False,
        "network_namespace": False,
        "pid_namespace": False,
        "mount_namespace": False,
    }
    if os.geteuid() != 0:
        with contextlib.suppress(OSError):
            _libc_call("unshare", CLONE_NEWUSER)
            result["user_namespace"] = True
    for key, flag, wanted in (
        ("network_namespace", CLONE_NEWNET, True),
        ("pid_namespace", CLONE_NEWPID, pid),
        ("mount_namespace", CLONE_NEWNS, mount),
    ):
        if wanted:
            with contextlib.suppress(OSError):
                _libc_call("unshare", flag)
                result[key] = True
    return result


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fn = _libc.mount
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    fn.restype = ctypes.c_int

    def enc(v: str | None) -> bytes | None:
        return None if v is None else os.fsencode(v)

    if fn(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _mount_setattr(path: str, flags: int, attr_set: int = 0, attr_clr: int = 0) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    fn = _libc.syscall
    fn.restype = ctypes.c_long
    rc = fn(
        ctypes.c_long(SYS_MOUNT_SETATTR),
        ctypes.c_int(AT_FDCWD),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.c_uint(flags),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount_setattr {path}: {os.strerror(err)}")


def make_filesystem_read_only(writable: list[str]) -> bool:
    """In the (already unshared) mount namespace: every mount read-only, except ``writable``.

    Mount events stop propagating to the host first (MS_PRIVATE). The ``writable`` directories
    are bind-mounted onto themselves read-write (nosuid, nodev); file permissions still apply
    on top, so the unprivileged uid can write only where it could before *and* inside these.
    Closes the world-writable places (/tmp, /var/tmp, /dev/shm, /tmp/ray/...).
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount_setattr("/", AT_RECURSIVE, attr_set=MOUNT_ATTR_RDONLY)
    for path in writable:
        _mount(path, path, None, MS_BIND)
        _mount_setattr(path, 0, attr_set=MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, attr_clr=MOUNT_ATTR_RDONLY)
    return True


def interpreter_dirs_under(root: str) -> list[str]:
    """The interpreter's prefixes and package dirs that live below ``root`` (outermost only)."""
    candidates = {sys.prefix, sys.exec_prefix, sys.base_prefix}
    candidates |= {p for p in sys.path if "site-packages" in p or "dist-packages" in p}
    inside = sorted(
        os.path.abspath(p) for p in candidates if p and os.path.isdir(p) and os.path.abspath(p).startswith(root + os.sep)
    )
    outermost: list[str] = []
    for p in inside:
        if not any(p == q or p.startswith(q + os.sep) for q in outermost):
            outermost.append(p)
    return outermost


def mount_private_tmp(work_dir: str, config_dir: str | None) -> tuple[str, str | None]:
    """Replace /tmp by an empty read-only tmpfs holding only the work dir (and the matplotlib
    config dir), at fixed paths: the host's /tmp disappears from view and ``work_dir`` is the
    same for every replay, so printed paths are reproducible. Returns the new paths.
    """
    fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in (work_dir, config_dir) if p]
    # An interpreter or virtualenv installed under /tmp (a CI checkout, say) stays visible, read-only.
    keep = interpreter_dirs_under("/tmp")
    keep_fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in keep]
    try:
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=755")
        targets = [PRIVATE_WORK_DIR, PRIVATE_CONFIG_DIR][: len(fds)]
        for fd, target in zip(fds, targets, strict=True):
            os.mkdir(target, 0o755)
            _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND)
            _mount_setattr(
                target, 0, attr_set=MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, attr_clr=MOUNT_ATTR_RDONLY
            )
        for fd, path in zip(keep_fds, keep, strict=True):
            os.makedirs(path, 0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            _mount_setattr(path, AT_RECURSIVE, attr_set=MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
        _mount_setattr("/tmp", 0, attr_set=MOUNT_ATTR_RDONLY)
    finally:
        for fd in fds + keep_fds:
            os.close(fd)
    return PRIVATE_WORK_DIR, (PRIVATE_CONFIG_DIR if config_dir else None)


def mount_private_proc() -> bool:
    """From pid 1 of the new PID namespace: a read-only /proc that shows only its processes."""
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    return True


def apply_rlimits(limits: dict) -> bool:
    """Address space, CPU, file size, open files, processes (per uid, threads count), no core."""
    mb = 1024 * 1024
    cpu = int(limits["cpu_s"])
    settings = [
        (resource.RLIMIT_AS, int(limits["memory_mb"]) * mb, int(limits["memory_mb"]) * mb),
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL one second later
        (resource.RLIMIT_FSIZE, int(limits["max_file_bytes"]), int(limits["max_file_bytes"])),
        (resource.RLIMIT_NOFILE, 256, 256),
        (resource.RLIMIT_NPROC, int(limits["max_processes"]), int(limits["max_processes"])),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    for which, soft, hard in settings:
        resource.setrlimit(which, (soft, hard))
    return True


def set_no_new_privs() -> bool:
    """execve can never grant privileges again (setuid binaries, file capabilities)."""
    _libc_call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    return True


def preimport_libraries(modules: tuple[str, ...] = PRELOAD_MODULES) -> list[str]:
    """Import (and warm the lazy parts of) the libraries model code uses; return failures."""
    import importlib

    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a missing optional library is reported, not fatal
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
        from PIL import Image, ImageFont

        Image.init()  # registers every plugin now, not lazily after the drop
        ImageFont.load_default()
        fig = plt.figure(figsize=(1, 1), dpi=10)  # warms the Agg canvas, fonts and the PNG writer
        fig.text(0.5, 0.5, "x")
        import io

        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)
    except Exception as exc:  # noqa: BLE001
        failed.append(f"warm-up: {type(exc).__name__}: {exc}")
    return failed


def _world_traversable(path: str) -> bool:
    """True if "others" may search ``path`` and every ancestor (what the dropped uid gets)."""
    current = os.path.abspath(path)
    while True:
        try:
            st = os.stat(current)
        except OSError:
            return False
        if not st.st_mode & 0o001:
            return False
        parent = os.path.dirname(current)
        if parent == current:
            return True
        current = parent


def expose_unreadable_sys_path() -> list[int]:
    """Keep lazy imports working after the drop for ``sys.path`` entries under /root (0700).

    Opens each such directory now (as root) and replaces its entry by ``/proc/self/fd/N``: the
    magic link reaches the directory without search permission on its ancestors, while the
    directory's own (world-readable) permissions still apply. Nothing else under /root becomes
    reachable: ``..`` from there needs search permission on /root again. The ``__path__`` of
    already-imported packages (``encodings``, ``email``, ...) is rewritten the same way.
    """
    fds = []
    new_path = []
    moved: dict[str, str] = {}
    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue
        if _world_traversable(entry):
            new_path.append(entry)
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        fds.append(fd)
        moved[entry.rstrip(os.sep) + os.sep] = f"/proc/self/fd/{fd}/"
        new_path.append(f"/proc/self/fd/{fd}")
    sys.path[:] = new_path
    sys.path_importer_cache.clear()

    def relocate(path: str) -> str:
        for old, new in moved.items():
            if path.startswith(old):
                return new + path[len(old) :]
        return path

    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            search[:] = [relocate(p) if isinstance(p, str) else p for p in search]
    return fds


def drop_privileges(uid: int, gid: int) -> bool:
    """setgroups([]) + setresgid + setresuid to an unprivileged uid; verify it cannot go back."""
    if os.geteuid() != 0:
        return False
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise RuntimeError("privilege drop did not take effect")
    try:
        os.setuid(0)
    except PermissionError:
        return True
    raise RuntimeError("privilege drop is reversible")


# --------------------------------------------------------------------------------------------
# wire protocol
# --------------------------------------------------------------------------------------------
def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        try:
            chunk = os.read(fd, min(n, 1 << 20))
        except InterruptedError:
            continue
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_message(fd: int) -> dict | None:
    header = _read_exact(fd, HEADER.size)
    if header is None:
        return None
    (length,) = HEADER.unpack(header)
    if length > MAX_REQUEST_BYTES:
        os._exit(EXIT_PROTOCOL)
    body = _read_exact(fd, length)
    if body is None:
        return None
    msg = json.loads(body.decode("utf-8"))
    return msg if isinstance(msg, dict) else None


def send_message(fd: int, obj: dict) -> None:
    data = json.dumps(obj, ensure_ascii=True).encode("ascii")
    view = memoryview(HEADER.pack(len(data)) + data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        view = view[n:]


# --------------------------------------------------------------------------------------------
# per-cell capture: output, images, exceptions
# --------------------------------------------------------------------------------------------
class CappedText:
    """A text stream that keeps the first ``budget`` UTF-8 bytes and counts the rest."""

    encoding = "utf-8"
    errors = "backslashreplace"

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.parts: list[bytes] = []
        self.kept = 0
        self.dropped = 0
        self.buffer = _CappedBinary(self)

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self.write_bytes(s.encode("utf-8", "backslashreplace"))
        return len(s)

    def write_bytes(self, b: bytes) -> None:
        room = self.budget - self.kept
        if room > 0:
            self.parts.append(b[:room])
            self.kept += min(room, len(b))
        self.dropped += max(0, len(b) - max(room, 0))

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def fileno(self) -> int:
        import io

        raise io.UnsupportedOperation("captured stream has no file descriptor")

    @property
    def closed(self) -> bool:
        return False


class _CappedBinary:
    def __init__(self, owner: CappedText) -> None:
        self._owner = owner

    def write(self, b) -> int:
        data = bytes(b)
        self._owner.write_bytes(data)
        return len(data)

    def flush(self) -> None:
        pass


def compose_output(out: CappedText, err: CappedText, notes: list[str], cap: int) -> str:
    err_bytes = err.getvalue()
    if notes:
        err_bytes += "".join(f"[sandbox] {n}\n" for n in notes).encode("utf-8", "backslashreplace")
    body = out.getvalue()
    if err_bytes or err.dropped:
        body += STDERR_MARKER.encode() + err_bytes
    dropped = out.dropped + err.dropped
    if len(body) > cap:
        dropped += len(body) - cap
        body = body[:cap]
    text = body.decode("utf-8", "ignore")  # only a character cut at the cap can be invalid
    if dropped:
        text += f"\n[output truncated: {dropped} bytes dropped]"
    return text


class Captures:
    """Images shown during one cell (plt.show, Figure.show, Image.show, cv2.imshow, display)."""

    def __init__(self, max_images: int, max_bytes: int) -> None:
        self.max_images = max_images
        self.max_bytes = max_bytes
        self.items: list[tuple[str, bytes]] = []
        self.bytes = 0
        self.notes: list[str] = []

    def room(self) -> bool:
        return len(self.items) < self.max_images

    def add_png(self, stem: str, png: bytes | None) -> None:
        if png is None:
            return
        if not self.room():
            self.notes.append(f"image {stem!r} not kept: more than {self.max_images} images in this cell")
            return
        if self.bytes + len(png) > self.max_bytes:
            self.notes.append(f"image {stem!r} not kept: the cell's image byte budget is exhausted")
            return
        self.items.append((stem, png))
        self.bytes += len(png)

    def add_pil(self, im, stem: str) -> None:
        if self.room():
            self.add_png(stem, png_bytes(im, stem, self.notes))
        else:
            self.add_png(stem, b"")  # records the note

    def add_figure(self, fig, stem: str = "figure") -> None:
        if not self.room():
            self.add_png(stem, b"")
            return
        import io

        from PIL import Image

        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        buf.seek(0)
        with Image.open(buf) as im:
            self.add_png(stem, png_bytes(im, stem, self.notes))


def png_bytes(im, stem: str, notes: list[str]) -> bytes | None:
    """Re-encode a PIL image as PNG (the parent only ever sees PNG)."""
    import io

    try:
        w, h = im.size
        if w * h > MAX_CAPTURE_PIXELS:
            notes.append(f"image {stem!r} not kept: {w}x{h} exceeds {MAX_CAPTURE_PIXELS} pixels")
            return None
        im.load()
        if im.mode not in PNG_MODES:
            has_alpha = "A" in im.mode or "a" in im.mode or "transparency" in im.info
            im = im.convert("RGBA" if has_alpha else "RGB")
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()
    except Exception as exc:  # noqa: BLE001 - a broken image is reported, not fatal
        notes.append(f"image {stem!r} not kept: {type(exc).__name__}: {exc}")
        return None


def ndarray_to_pil(arr, bgr: bool):
    import numpy as np
    from PIL import Image

    a = np.asarray(arr)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype.kind == "f":
        a = (np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and bgr and a.shape[2] in (3, 4):
        a = a[:, :, [2, 1, 0, 3][: a.shape[2]]]
    return Image.fromarray(np.ascontiguousarray(a))


def snapshot_images(root: str) -> dict[str, tuple[int, int, int, int]]:
    """Image files under ``root`` (recursively, symlinks not followed) -> (mtime_ns, size, ino, ctime_ns)."""
    import stat

    seen: dict[str, tuple[int, int, int, int]] = {}
    count = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for fname in sorted(filenames):
            count += 1
            if count > MAX_SCANNED_FILES:
                return seen
            if not fname.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(dirpath, fname)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                seen[os.path.relpath(path, root)] = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
    return seen


def read_image_file(path: str, stem: str, notes: list[str]) -> bytes | None:
    from PIL import Image

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh, Image.open(fh) as im:
            return png_bytes(im, stem, notes)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"image {stem!r} not kept: {type(exc).__name__}: {exc}")
        return None


def _safe_stem(text: str) -> str:
    stem = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in text)[:80].strip(".")
    return stem or "image"


_FORBIDDEN_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTUNREACH,
        errno.EADDRNOTAVAIL,
        errno.EAFNOSUPPORT,
        errno.ECONNREFUSED,
    }
)
_NETWORK_MODULES = (
    "socket", "ssl", "urllib", "http", "ftplib", "smtplib", "poplib", "imaplib", "asyncio",
    "selectors", "requests", "urllib3", "httpx", "httpcore", "aiohttp",
)  # fmt: skip


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    todo = [exc]
    while todo and len(chain) < 32:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        chain.append(e)
        todo.extend([e.__cause__, e.__context__])
        reason = getattr(e, "reason", None)  # urllib.error.URLError wraps the socket error
        if isinstance(reason, BaseException):
            todo.append(reason)
    return chain


def _raised_in_network_module(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.split(".")[0] in _NETWORK_MODULES:
            return True
        tb = tb.tb_next
    return False


def _is_allocation_failure(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and isinstance(exc, cv2.error):
        text = str(exc)
        return any(
            k in text for k in ("Insufficient memory", "Failed to allocate", "bad_alloc", "OutOfMemory")
        )
    return False


def classify_exception(exc: BaseException) -> str:
    chain = _exception_chain(exc)
    if any(_is_allocation_failure(e) for e in chain):
        return "memory"
    socket = sys.modules.get("socket")
    for e in chain:
        if isinstance(e, PermissionError):
            return "forbidden"
        if socket is not None and isinstance(e, (socket.gaierror, socket.herror)):
            return "forbidden"
        if isinstance(e, OSError) and e.errno in _FORBIDDEN_ERRNOS:
            return "forbidden"
        if _raised_in_network_module(e):
            return "forbidden"
    return "error"


def format_exception(exc: BaseException, cap: int) -> str:
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next  # hide the runner's own frames
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    data = text.encode("utf-8", "backslashreplace")
    if len(data) > cap:
        text = (
            data[:cap].decode("utf-8", "ignore") + f"\n[traceback truncated: {len(data) - cap} bytes dropped]"
        )
    return text


# --------------------------------------------------------------------------------------------
# policy detector
# --------------------------------------------------------------------------------------------
# Isolation is done by the namespaces, uid and rlimits above; this audit hook does not isolate
# anything (audit hooks are not a security boundary) and blocks nothing: the kernel-level layers
# do the refusing, and the attack tests prove they do. It makes *attempts* visible: a cell that
# tries to spawn a process, open a socket, signal another process, call into C through ctypes,
# write outside its work dir or read host secrets is reported "forbidden" even when the attempt
# was contained silently (a shell that ran as nobody) or the cell caught the error itself.
_SPAWN_EVENTS = frozenset({"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                           "os.fork", "os.forkpty", "pty.spawn", "os.kill", "os.killpg"})
_NET_EVENTS = frozenset({"socket.__new__", "socket.connect", "socket.bind", "socket.sendto",
                         "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
                         "urllib.Request", "http.client.connect"})
_FFI_EVENTS = frozenset({"ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function"})
_FS_WRITE_EVENTS = frozenset({"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                              "os.symlink", "os.link", "os.truncate", "shutil.rmtree", "os.utime"})
_SECRET_PREFIXES = ("/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/passwd", "/etc/ssh", "/root",
                    "/home", "/proc/1/", "/var/", "/boot", "/run/secrets")
_SECRET_PATTERNS = ("/environ", "/.ssh/", "/.aws/", "/.netrc", "/.bash_history")


class PolicyMonitor:
    def __init__(self, work_dir: str) -> None:
        self.work_dir = os.path.realpath(work_dir)
        self.active = False
        self.violations: list[str] = []

    def _inside(self, path) -> bool:
        try:
            p = os.fsdecode(path) if not isinstance(path, int) else None
        except TypeError:
            return True
        if p is None:
            return True  # an already open fd
        full = os.path.realpath(os.path.join(self.work_dir, p))
        return full == self.work_dir or full.startswith(self.work_dir + os.sep)

    def _secret(self, path) -> bool:
        try:
            p = os.path.realpath(os.path.join(self.work_dir, os.fsdecode(path)))
        except TypeError:
            return False
        return p.startswith(_SECRET_PREFIXES) or any(x in p for x in _SECRET_PATTERNS)

    def check(self, event: str, args: tuple) -> str | None:
        if event in _SPAWN_EVENTS:
            return f"{event}: starting or signalling processes is not allowed"
        if event in _NET_EVENTS:
            return f"{event}: network access is not allowed"
        if event in _FFI_EVENTS:
            return f"{event}: calls into native code through ctypes are not allowed"
        if event == "open" and args:
            path, mode = args[0], args[1] if len(args) > 1 else "r"
            writing = isinstance(mode, str) and any(c in mode for c in "wax+")
            if isinstance(mode, int):  # os.open flags
                writing = bool(mode & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
            if writing and not self._inside(path):
                return f"open({path!r}, {mode!r}): writing outside the work dir is not allowed"
            if self._secret(path):
                return f"open({path!r}): reading host files is not allowed"
        if event in _FS_WRITE_EVENTS and args and not all(
            self._inside(a) for a in args[:2] if isinstance(a, str | bytes | os.PathLike)
        ):
            return f"{event}{args[:2]!r}: changing files outside the work dir is not allowed"
        return None

    def __call__(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        reason = self.check(event, args)
        if reason is not None and len(self.violations) < 32:
            self.violations.append(reason)


# --------------------------------------------------------------------------------------------
# the worker
# --------------------------------------------------------------------------------------------
class Worker:
    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.limits = cfg["limits"]
        self.work_dir = cfg["work_dir"]
        self.inputs = list(cfg["inputs"])
        self.req_fd = int(cfg["req_fd"])
        self.resp_fd = int(cfg["resp_fd"])
        self.capture = Captures(0, 0)
        self.namespace: dict = {}
        self.notes: list[str] = []
        self.pid = os.getpid()
        self.policy = PolicyMonitor(self.work_dir)

    # -- set-up -----------------------------------------------------------------------------
    def isolate(self, layers: dict[str, bool]) -> None:
        layers["rlimits"] = apply_rlimits(self.limits)
        layers["no_new_privs"] = set_no_new_privs()
        if self.cfg.get("preload", True):
            self.notes.extend(preimport_libraries())
        self.path_fds = expose_unreadable_sys_path()
        uid, gid = self.cfg.get("uid"), self.cfg.get("gid")
        layers["unprivileged_uid"] = drop_privileges(int(uid), int(gid)) if uid is not None else False
        os.chdir(self.work_dir)
        os.umask(0o022)

    def install_hooks(self) -> None:
        import matplotlib
        import matplotlib.pyplot as plt
        from matplotlib import _pylab_helpers
        from matplotlib.figure import Figure
        from PIL import Image

        worker = self

        def show(*args, **kwargs):  # noqa: ARG001 - matplotlib.pyplot.show signature
            managers = sorted(_pylab_helpers.Gcf.get_all_fig_managers(), key=lambda m: m.num)
            for manager in managers:
                worker.capture.add_figure(manager.canvas.figure, "figure")
            plt.close("all")

        def figure_show(self, *args, **kwargs):  # noqa: ARG001
            worker.capture.add_figure(self, "figure")

        def image_show(self, *args, **kwargs):  # noqa: ARG001
            worker.capture.add_pil(self, "show")

        plt.show = show
        matplotlib.pyplot.show = show
        Figure.show = figure_show
        Image.Image.show = image_show
        cv2 = sys.modules.get("cv2")
        if cv2 is not None:

            def imshow(winname, mat):
                worker.capture.add_pil(ndarray_to_pil(mat, bgr=True), _safe_stem(str(winname)))

            cv2.imshow = imshow
            cv2.waitKey = lambda *a, **k: -1
            cv2.destroyAllWindows = lambda *a, **k: None
            cv2.destroyWindow = lambda *a, **k: None
            cv2.namedWindow = lambda *a, **k: None

    def display(self, *objs, **kwargs) -> None:  # noqa: ARG002 - IPython.display.display stand-in
        from matplotlib.figure import Figure
        from PIL import Image

        for obj in objs:
            if isinstance(obj, Image.Image):
                self.capture.add_pil(obj, "display")
            elif isinstance(obj, Figure):
                self.capture.add_figure(obj, "figure")
            else:
                print(repr(obj))

    def build_namespace(self) -> None:
        import builtins
        import random

        from PIL import Image

        loaded = []
        for name in self.inputs:
            try:
                im = Image.open(name)
                im.load()  # reads the pixels and closes the file
                loaded.append(im)
            except Exception as exc:  # noqa: BLE001 - the cells will fail on it, visibly
                self.notes.append(f"input {name}: {type(exc).__name__}: {exc}")
                loaded.append(None)
        random.seed(0)
        np = sys.modules.get("numpy")
        if np is not None:
            np.random.seed(0)
        if self.work_dir not in sys.path:
            sys.path.append(self.work_dir)
        self.namespace = {
            "__name__": "__main__",
            "__builtins__": builtins,
            "image": loaded[0] if loaded else None,
            "images": loaded,
            "image_paths": list(self.inputs),
            "work_dir": self.work_dir,
            "display": self.display,
        }

    # -- cells ------------------------------------------------------------------------------
    def run_cell(self, index: int, code: str) -> dict:
        import linecache

        cap = int(self.limits["max_output_bytes"])
        out, err = CappedText(cap), CappedText(cap)
        self.capture = Captures(int(self.limits["max_images_per_cell"]), int(self.limits["max_file_bytes"]))
        before = snapshot_images(self.work_dir)
        filename = f"<cell{index}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        status, error = "ok", ""
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        self.policy.violations = []
        try:
            compiled = compile(code, filename, "exec", dont_inherit=True)
            self.policy.active = True
            exec(compiled, self.namespace)
        except BaseException as exc:  # noqa: BLE001 - SystemExit/KeyboardInterrupt are cell errors too
            status = classify_exception(exc)
            error = format_exception(exc, cap)
        finally:
            self.policy.active = False
            if os.getpid() != self.pid:
                os._exit(0)  # a process the cell forked fell through: it must not answer the parent
            sys.stdout, sys.stderr = saved
        if self.policy.violations:  # attempted, even if the cell caught the refusal
            status = "forbidden"
            error = ("\n".join(dict.fromkeys(self.policy.violations)) + ("\n" + error if error else ""))[:cap]
        images = self.collect_images(index, before)
        return {
            "type": "cell",
            "index": index,
            "status": status,
            "stdout": compose_output(out, err, self.capture.notes, cap),
            "error": error,
            "images": images,
        }

    def collect_images(self, index: int, before: dict) -> list[dict]:
        import base64

        capture = self.capture
        shown, capture.items, capture.bytes = capture.items, [], 0
        after = snapshot_images(self.work_dir)
        inputs = set(self.inputs)
        changed = sorted(p for p, sig in after.items() if p not in inputs and before.get(p) != sig)
        for rel in changed:
            stem = _safe_stem(os.path.splitext(os.path.basename(rel))[0])
            if not capture.room():
                capture.notes.append(
                    f"image {rel!r} not kept: more than {capture.max_images} images in this cell"
                )
                continue
            capture.add_png(stem, read_image_file(os.path.join(self.work_dir, rel), rel, capture.notes))
        for stem, png in shown:  # files first (sorted by path), then shown images in call order
            capture.add_png(stem, png)
        return [
            {"name": f"cell{index}_{k}_{stem}.png", "png": base64.b64encode(png).decode("ascii")}
            for k, (stem, png) in enumerate(capture.items)
        ]

    def serve(self) -> None:
        while True:
            try:
                msg = recv_message(self.req_fd)
            except Exception:  # noqa: BLE001
                os._exit(EXIT_PROTOCOL)
            if msg is None or msg.get("op") == "exit":
                os._exit(0)
            if msg.get("op") != "run":
                os._exit(EXIT_PROTOCOL)
            index = int(msg["index"])
            try:
                result = self.run_cell(index, str(msg["code"]))
            except Exception as exc:  # noqa: BLE001 - e.g. the cell sabotaged builtins the runner uses
                if os.getpid() != self.pid:
                    os._exit(0)
                sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
                result = {
                    "type": "cell",
                    "index": index,
                    "status": "error",
                    "stdout": "",
                    "error": f"sandbox runner failed after the cell: {type(exc).__name__}: {exc}"[:4000],
                    "images": [],
                }
            send_message(self.resp_fd, result)


def worker_main(cfg: dict, layers: dict[str, bool], started: float) -> None:
    worker = Worker(cfg)
    try:
        worker.isolate(layers)
        worker.install_hooks()
        worker.build_namespace()
        sys.addaudithook(worker.policy)  # active only while a cell runs
        layers["policy_monitor"] = True
    except BaseException as exc:  # noqa: BLE001
        print(f"sandbox set-up failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(EXIT_SETUP_FAILED)
    send_message(
        worker.resp_fd,
        {
            "type": "ready",
            "layers": layers,
            "notes": worker.notes,
            "startup_ms": (time.monotonic() - started) * 1000.0,
        },
    )
    worker.serve()


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


def _close_pipes(cfg: dict) -> None:
    for key in ("req_fd", "resp_fd"):
        with contextlib.suppress(OSError):
            os.close(int(cfg[key]))


def pid_namespace_init(cfg: dict, layers: dict[str, bool], started: float) -> None:
    """pid 1 of the new namespace: fork the worker, reap everything, exit with the worker."""
    set_parent_death_signal(None)
    layers["private_proc"] = False
    if layers.get("mount_namespace"):
        try:
            layers["private_proc"] = mount_private_proc()
        except OSError as exc:
            print(f"sandbox: private /proc unavailable: {exc}", file=sys.stderr, flush=True)
    worker_pid = os.fork()
    if worker_pid == 0:
        try:
            set_parent_death_signal(1)
            worker_main(cfg, layers, started)
        finally:
            os._exit(EXIT_SETUP_FAILED)
    _close_pipes(cfg)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(EXIT_SETUP_FAILED)
        except InterruptedError:
            continue
        if pid == worker_pid:
            os._exit(_exit_code(status))  # the kernel now SIGKILLs everything left in the namespace


def main(argv: list[str]) -> None:
    started = time.monotonic()
    if len(argv) == 2 and argv[1] == "--probe":
        probe()
        return
    cfg = json.loads(argv[1])
    if cfg.get("disable_aslr"):
        with contextlib.suppress(OSError):
            disable_aslr_and_reexec()
    layers: dict[str, bool] = {}
    try:
        layers["parent_death_signal"] = set_parent_death_signal(int(cfg["parent_pid"]))
        layers["new_session"] = ensure_new_session()
        layers.update(unshare_namespaces(pid=bool(cfg.get("pid_namespace", True))))
    except BaseException as exc:  # noqa: BLE001
        print(f"sandbox set-up failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(EXIT_SETUP_FAILED)
    layers["read_only_filesystem"] = layers["private_tmp"] = False
    if layers["mount_namespace"]:
        try:
            layers["read_only_filesystem"] = make_filesystem_read_only([cfg["work_dir"]])
            config_dir = os.environ.get("MPLCONFIGDIR")
            cfg["work_dir"], config_dir = mount_private_tmp(cfg["work_dir"], config_dir)
            os.environ.update(HOME=cfg["work_dir"], TMPDIR=cfg["work_dir"])
            if config_dir:
                os.environ["MPLCONFIGDIR"] = config_dir
            layers["private_tmp"] = True
        except OSError as exc:
            print(f"sandbox: read-only filesystem incomplete: {exc}", file=sys.stderr, flush=True)
    if not layers.get("pid_namespace"):
        worker_main(cfg, layers, started)
        os._exit(0)
    init_pid = os.fork()
    if init_pid == 0:
        try:
            pid_namespace_init(cfg, layers, started)
        finally:
            os._exit(EXIT_SETUP_FAILED)
    _close_pipes(cfg)
    while True:
        try:
            _, status = os.waitpid(init_pid, 0)
        except InterruptedError:
            continue
        os._exit(_exit_code(status))


def probe() -> None:
    """Report which layers this machine allows (used by isolation_report)."""
    result = {"parent_death_signal": False, "no_new_privs": False}
    try:
        result["parent_death_signal"] = set_parent_death_signal(None)
        result["no_new_privs"] = set_no_new_privs()
    except OSError:
        pass
    result.update(unshare_namespaces())
    result["read_only_filesystem"] = False
    if result["mount_namespace"]:
        with contextlib.suppress(OSError):
            result["read_only_filesystem"] = make_filesystem_read_only([])
    result["root"] = os.geteuid() == 0
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv)
