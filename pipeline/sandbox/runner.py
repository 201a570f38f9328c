"""The sandbox child: isolates itself, then replays model-written cells sent by the parent.

Two ways in, one hardened child (the isolation steps live in ``isolation.py`` next to this file,
loaded without putting the directory on ``sys.path``; ``-P`` keeps it off):

* level "process" (:class:`pipeline.sandbox.process.ProcessSandbox`): ``python -s -P -B runner.py
  CONFIG_JSON``, a fresh interpreter per trajectory, started with a clean environment as its own
  session leader; the worker pre-imports the image libraries before it drops privileges.
* level "zygote" (:class:`pipeline.sandbox.zygote.ZygoteSandbox`): ``python -s -P -B runner.py
  --zygote CONFIG_JSON`` starts one long-lived zygote per sandbox with a clean environment; it
  pre-imports the libraries once and forks each trajectory's init (see :func:`zygote_main`).

Process tree of one trajectory when a PID namespace is available::

    outer   host pid, session leader, root      (process level only) unshare(PID); waits for
                                                init and mirrors its exit code
      init  pid 1 of the new PID namespace,      joins the cgroups; unshare(NET|NS|IPC|UTS);
            root                                read-only mounts, private /tmp, masked host dirs
                                                (allowlist view of /), private /proc, tmpfs work
                                                dir; reaps orphans; when the worker
                                                exits it kills what is left and exits with its code
        worker  pid 2, unprivileged uid         rlimits, no_new_privs, drop privileges, seccomp,
                                                runs the cells

The zygote puts the init into a fresh PID namespace itself (unshare, fork, setns back), so there
is no outer process; init reports the worker's exit code on a status pipe. It forks the next
trajectory's init in advance, which prepares its namespaces and filesystem while the current
trajectory runs (:func:`_standby_init`). Without a PID namespace init is a plain process (a child
subreaper) of the session. Every layer that the kernel refuses is reported as False in the ready
message instead of failing the start; the parent decides.

Wire protocol, both directions: 4-byte big-endian length, then a UTF-8 JSON object.
  parent -> worker  {"op": "run", "index": i, "code": "..."} | {"op": "exit"}
                    (zygote level: first {"op": "config", ...}, read by init)
  worker -> parent  {"type": "ready", "layers": {...}, "notes": [...], "startup_ms": ...}
                    {"type": "cell", "index": i, "status": "ok|error|memory|forbidden",
                     "stdout": "...", "error": "...", "images": [{"name": "...", "png": "<base64>"}]}
The parent never unpickles anything from here and validates every message.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import struct
import sys
import time

HEADER = struct.Struct(">I")
MAX_REQUEST_BYTES = 64 * 1024 * 1024
STATUS = struct.Struct(">i")  # init -> parent (zygote level): the worker's exit code

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PNG_MODES = ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")
MAX_CAPTURE_PIXELS = 64 * 1024 * 1024
MAX_SCANNED_FILES = 20000
STDERR_MARKER = "\n[stderr]\n"


def _load_isolation():
    """``isolation.py`` from this directory, without putting the directory on ``sys.path``."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "isolation.py")
    spec = importlib.util.spec_from_file_location("twi_sandbox_isolation", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


iso = _load_isolation()
EXIT_ORPHANED, EXIT_SETUP_FAILED, EXIT_PROTOCOL = iso.EXIT_ORPHANED, iso.EXIT_SETUP_FAILED, iso.EXIT_PROTOCOL


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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's signature and leading IHDR chunk, or None if malformed."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[8:16] != b"\x00\x00\x00\rIHDR":
        return None
    w, h = struct.unpack(">II", data[16:24])
    return (w, h) if w > 0 and h > 0 else None


def read_image_file(path: str, stem: str, notes: list[str]) -> bytes | None:
    """An image file the cell wrote, as PNG: a PNG file passes through byte for byte once its
    signature and IHDR size check out (never decoded here); other formats are re-encoded."""
    from PIL import Image

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            head = fh.read(24)
            if head.startswith(PNG_SIGNATURE):
                size = png_header_size(head)
                if size is None:
                    notes.append(f"image {stem!r} not kept: malformed PNG header")
                    return None
                if size[0] * size[1] > MAX_CAPTURE_PIXELS:
                    w, h = size
                    notes.append(f"image {stem!r} not kept: {w}x{h} exceeds {MAX_CAPTURE_PIXELS} pixels")
                    return None
                return head + fh.read()
            fh.seek(0)
            with Image.open(fh) as im:
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
    """An audit hook in the worker that records attempts on the host (see the comment above).

    Its ``forbidden`` counts are a lower bound: it lives in the same process as the cells, so a
    cell can bypass it (C code such as ``cv2.imread`` raises no audit events), silence it (find
    it through ``gc`` and switch it off) or fake the status it reports (patch the send function).
    That is inherent to an in-process monitor and accepted: no isolation layer depends on it;
    the namespaces, masks, uid, seccomp, rlimits and cgroups refuse the attempts themselves.
    """

    def __init__(self, work_dir: str, library_dirs: list[str] = ()) -> None:
        self.work_dir = os.path.realpath(work_dir)
        # Reading the interpreter's own files (lazy imports, tracebacks) is not an attempt on the
        # host, even where they live under /root: the mount namespace re-exposes exactly these.
        self.library_dirs = tuple(d.rstrip(os.sep) + os.sep for d in library_dirs if d not in ("", "/"))
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
        if self.library_dirs and p.startswith(self.library_dirs):
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
# paths the trajectory's code expects
# --------------------------------------------------------------------------------------------
# Thyme writes its results under /mnt/data/temp_processed_images/ and opens the input image at the
# path from its prompt (an absolute path on the machine that generated the data). Neither exists
# here, so the worker maps them into the work dir: string constants in the cell that name an
# input's original path, or lie under OUTPUT_ROOT, are redirected before the cell is compiled
# (the stored code is never changed), and the work-dir paths are written back to the original
# ones in what the cell prints, so the replayed text compares with the recorded observation.
OUTPUT_ROOT = "/mnt/data"
OUTPUT_DIRS = ("temp_processed_images",)


class PathMap:
    """Where the trajectory's paths live in the work dir.

    * an input's original path (absolute, e.g. Thyme's ``/eval/17127.jpg``, or relative) named by
      a string constant of a cell is redirected to the input's copy in the work dir;
    * every input is also present in the work dir (the cells' cwd) under its original relative
      path (``images/stars.png``) and its bare file name (``stars.png``), so paths the code builds
      at run time resolve too (hard links: like the one file of the original machine, a cell that
      overwrites it changes what every name reads);
    * ``/mnt/data/...`` (Thyme's output folder) is redirected into the work dir.
    """

    def __init__(self, work_dir: str, originals: dict[str, str]) -> None:
        self.work_dir = work_dir.rstrip(os.sep)
        self.output_root = os.path.join(self.work_dir, OUTPUT_ROOT.strip("/"))
        # original path as the trajectory wrote it -> the input's path in the work dir
        self.inputs = {o: os.path.join(self.work_dir, n) for o, n in originals.items() if o}
        taken = set(originals.values())
        self.aliases: dict[str, str] = {}  # relative alias in the work dir -> input file name
        for original, name in originals.items():
            for alias in _relative_aliases(original):
                if alias not in taken:
                    taken.add(alias)
                    self.aliases[alias] = name

    def prepare(self) -> None:
        import shutil

        for name in OUTPUT_DIRS:
            os.makedirs(os.path.join(self.output_root, name), exist_ok=True)
        for alias, name in self.aliases.items():
            target = os.path.join(self.work_dir, alias)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                os.link(os.path.join(self.work_dir, name), target)
            except OSError:
                shutil.copyfile(os.path.join(self.work_dir, name), target)

    def map(self, text: str) -> str:
        if text in self.inputs:
            return self.inputs[text]
        if text == OUTPUT_ROOT or text.startswith(OUTPUT_ROOT + "/"):
            return self.output_root + text[len(OUTPUT_ROOT) :]
        return text

    def unmap(self, text: str) -> str:
        """Work-dir paths back to the trajectory's own, in printed output."""
        for original, mapped in sorted(self.inputs.items(), key=lambda kv: -len(kv[1])):
            text = text.replace(mapped, original)
        return text.replace(self.output_root, OUTPUT_ROOT)

    def rewrite(self, tree):
        """Redirect the string constants of a parsed cell (in place); returns the tree."""
        import ast

        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                node.value = self.map(node.value)
        return tree


def _relative_aliases(original: str) -> list[str]:
    """Work-dir-relative names an input is also reachable by: its relative path (normalised,
    never escaping the work dir) and its bare file name."""
    if not original or original.startswith(("data:", "http://", "https://")) or "\x00" in original:
        return []
    original = original.removeprefix("file://")
    out = []
    if not os.path.isabs(original):
        rel = os.path.normpath(original)
        if not rel.startswith("..") and rel != "." and not rel.startswith(OUTPUT_ROOT.strip("/")):
            out.append(rel)
    base = os.path.basename(original)
    if base and base not in (".", ".."):
        out.append(base)
    return list(dict.fromkeys(a for a in out if len(a) < 256))


def split_last_expression(tree):
    """(module without its last statement, the last expression) when the cell ends on an
    expression statement, as a notebook shows it; else (tree, None)."""
    import ast

    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return tree, None
    last = ast.Expression(tree.body[-1].value)
    ast.copy_location(last, tree.body[-1])
    return ast.Module(body=tree.body[:-1], type_ignores=[]), last


# --------------------------------------------------------------------------------------------
# the worker
# --------------------------------------------------------------------------------------------
class Worker:
    def __init__(self, cfg: dict, seccomp: object | None = None) -> None:
        self.cfg = cfg
        self.limits = cfg["limits"]
        self.work_dir = cfg["work_dir"]
        global MAX_CAPTURE_PIXELS  # no point encoding what the parent will drop
        MAX_CAPTURE_PIXELS = min(MAX_CAPTURE_PIXELS, int(self.limits.get("max_output_pixels", 1 << 62)))
        self.inputs = list(cfg["inputs"])
        originals = [str(p or "") for p in cfg.get("input_paths") or []]
        self.paths = PathMap(self.work_dir, dict(zip(originals, self.inputs, strict=False)))
        self.processed_path: object = None
        self.req_fd = int(cfg["req_fd"])
        self.resp_fd = int(cfg["resp_fd"])
        self.capture = Captures(0, 0)
        self.namespace: dict = {}
        self.notes: list[str] = []
        self.pid = os.getpid()
        self.seccomp = seccomp  # an iso.SeccompFilter built by the zygote, or None: build it here
        self.policy = PolicyMonitor(self.work_dir, iso.interpreter_paths())

    # -- set-up -----------------------------------------------------------------------------
    def isolate(self, layers: dict[str, bool]) -> None:
        if not self.cfg.get("worker_prepared"):  # else done in advance by a PreforkedWorker
            self.path_fds = prepare_worker_process(self.cfg, layers, self.notes)
        drop_worker_privileges(self.cfg, layers, self.seccomp, self.notes)
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
        try:
            self.paths.prepare()
        except OSError as exc:
            self.notes.append(f"output folder {OUTPUT_ROOT}: {exc}")
        paths = list(self.inputs)  # relative to the work dir, the cells' cwd
        self.namespace = {
            "__name__": "__main__",
            "__builtins__": builtins,
            "image": loaded[0] if loaded else None,
            "images": loaded,
            "image_path": paths[0] if paths else None,
            "image_paths": paths,
            "work_dir": self.work_dir,
            "display": self.display,
            # PyVision exposes the inputs as image_clue_0, image_clue_1, ...
            **{f"image_clue_{k}": im for k, im in enumerate(loaded)},
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
            import ast

            body, last = split_last_expression(self.paths.rewrite(ast.parse(code, filename)))
            compiled = compile(body, filename, "exec", dont_inherit=True)
            shown = compile(last, filename, "eval", dont_inherit=True) if last is not None else None
            self.policy.active = True
            exec(compiled, self.namespace)
            if shown is not None:
                self.show_result(eval(shown, self.namespace))
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
        images = self.collect_images(index, before, out.getvalue().decode("utf-8", "replace"))
        return {
            "type": "cell",
            "index": index,
            "status": status,
            "stdout": self.paths.unmap(compose_output(out, err, self.capture.notes, cap)),
            "error": self.paths.unmap(error),
            "images": images,
        }

    def show_result(self, value) -> None:
        """A notebook shows a cell's last expression: images are captured (text is not echoed,
        matching the recorded observations of script-style trajectories)."""
        from matplotlib.figure import Figure
        from PIL import Image

        if isinstance(value, Image.Image):
            self.capture.add_pil(value, "output")
        elif isinstance(value, Figure):
            self.capture.add_figure(value, "figure")

    def referenced_images(self, stdout: str) -> list[str]:
        """Work-dir image files (not inputs) the cell pointed at without writing them in this
        cell: a changed ``processed_path`` variable (Thyme), or paths it printed."""
        import re

        found = []
        value = self.namespace.get("processed_path")
        if isinstance(value, str) and value != self.processed_path:
            found.append(value)
        self.processed_path = value if isinstance(value, str) else None
        # tokens between blanks and quotes (linear: no backtracking over a flood of output)
        found += [t.rstrip(".,;:)]}") for t in re.split(r"[\s'\"(\[{,]+", stdout)]
        found = list(dict.fromkeys(t for t in found if t and t.lower().endswith(IMAGE_EXTENSIONS)))
        found = found[: 4 * int(self.limits["max_images_per_cell"]) + 1]  # a flood of names costs no more
        rels = []
        for path in found:
            full = os.path.realpath(os.path.join(self.work_dir, path))
            rel = os.path.relpath(full, os.path.realpath(self.work_dir))
            if rel.startswith(("..", os.sep)) or rel in self.inputs or rel in self.paths.aliases or not os.path.isfile(full):
                continue
            rels.append(rel)
        return list(dict.fromkeys(rels))

    def collect_images(self, index: int, before: dict, stdout: str = "") -> list[dict]:
        import base64

        capture = self.capture
        shown, capture.items, capture.bytes = capture.items, [], 0
        after = snapshot_images(self.work_dir)
        inputs = set(self.inputs)
        changed, inodes = [], set()
        for p in sorted(p for p, sig in after.items() if p not in inputs and before.get(p) != sig):
            if after[p][2] not in inodes:  # one file under several names (an input's aliases) is one image
                inodes.add(after[p][2])
                changed.append(p)
        changed += [p for p in self.referenced_images(stdout) if p not in changed]
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


def prepare_worker_process(cfg: dict, layers: dict[str, bool], notes: list[str]) -> list[int]:
    """The worker's first layers: rlimits, no_new_privs (and the imports at the process level).
    Depends only on the sandbox's settings, not on the trajectory. Returns the fds that keep
    unreadable sys.path entries reachable after the privileges are dropped."""
    iso.set_oom_score_adj(0)  # init is protected from the OOM killer; the cells are not
    layers["rlimits"] = iso.apply_rlimits(cfg["limits"])
    layers["no_new_privs"] = iso.set_no_new_privs()
    if cfg.get("preload", True) and not cfg.get("preloaded"):
        notes.extend(iso.preimport_libraries())
    return iso.expose_unreadable_sys_path()


def drop_worker_privileges(cfg: dict, layers: dict[str, bool], seccomp: object | None, notes: list[str]) -> None:
    """The unprivileged uid, then the seccomp filter (last: it refuses the steps before it)."""
    uid, gid = cfg.get("uid"), cfg.get("gid")
    layers["unprivileged_uid"] = iso.drop_privileges(int(uid), int(gid)) if uid is not None else False
    layers["seccomp"] = False
    if "seccomp" not in cfg.get("disabled", ()):
        try:
            seccomp = seccomp if seccomp is not None else iso.SeccompFilter()
            layers["seccomp"] = seccomp.load()  # last: it refuses the steps above
        except OSError as exc:
            notes.append(f"seccomp filter not applied: {exc}")


# The sandbox settings a pre-forked worker was isolated with; a trajectory must match them.
WORKER_SETTINGS = ("limits", "uid", "gid", "disabled")


class PreforkedWorker:
    """A worker forked by a standby init before its trajectory is known, with its rlimits and
    no_new_privs applied (the fork and those layers leave the critical path: ~2 ms of a
    trajectory's ~7 ms start here). It waits, still root and running nothing of the trajectory, on a socket only its
    init holds; with the trajectory's config and pipes it drops to the sandbox uid, loads the
    seccomp filter and runs the cells, exactly as a worker forked on the spot."""

    def __init__(self, settings: dict, layers: dict[str, bool], seccomp: object | None, closing: list[int]) -> None:
        import socket

        self.settings = {k: settings.get(k) for k in WORKER_SETTINGS}
        init_pid = os.getpid()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                ours.close()
                for fd in closing:  # the standby's socket to the zygote: never the cells'
                    os.close(fd)
                iso.set_parent_death_signal(init_pid)
                self._serve(theirs, {**settings, "preloaded": True}, layers, seccomp)
            finally:
                os._exit(EXIT_SETUP_FAILED)
        theirs.close()
        self.sock = ours

    @staticmethod
    def _serve(sock, settings: dict, layers: dict[str, bool], seccomp: object | None) -> None:
        import socket

        notes: list[str] = []
        path_fds = prepare_worker_process(settings, layers, notes)
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 16, 3)
            cfg = recv_message(sock.fileno()) if msg == b"go" and len(fds) == 3 else None
        except OSError:
            cfg = None
        if not cfg:
            os._exit(0)  # the init went away or gave up on this worker
        sock.close()
        req_fd, resp_fd, log_fd = fds
        os.dup2(log_fd, 1)  # fd-level output goes to the trajectory's log, as with a fresh fork
        os.dup2(log_fd, 2)
        os.close(log_fd)
        cfg.update(req_fd=req_fd, resp_fd=resp_fd, worker_prepared=True)
        worker_main(cfg, layers, float(cfg.pop("started_monotonic")), seccomp, path_fds, notes)

    def matches(self, cfg: dict) -> bool:
        return all(cfg.get(k) == v for k, v in self.settings.items())

    def start(self, cfg: dict, started: float) -> None:
        """Hand the trajectory to the worker (raises OSError if it is gone)."""
        import socket

        socket.send_fds(self.sock, [b"go"], [int(cfg["req_fd"]), int(cfg["resp_fd"]), 1])
        send_message(self.sock.fileno(), {**cfg, "started_monotonic": started})
        self.sock.close()

    def discard(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def worker_main(
    cfg: dict, layers: dict[str, bool], started: float, seccomp: object | None = None,
    path_fds: list[int] | None = None, notes: list[str] | None = None,
) -> None:  # fmt: skip
    worker = Worker(cfg, seccomp)
    worker.path_fds = list(path_fds or [])
    worker.notes.extend(notes or [])
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


# --------------------------------------------------------------------------------------------
# the trajectory's init: namespaces, filesystem, cgroups, then the worker
# --------------------------------------------------------------------------------------------
def isolate_filesystem(cfg: dict, layers: dict[str, bool]) -> None:
    """Read-only mounts, private /tmp with the work dir at /tmp/work, masked host directories."""
    layers["read_only_filesystem"] = layers["private_tmp"] = layers["masked_host_dirs"] = False
    if not layers.get("mount_namespace"):
        return
    try:
        layers["read_only_filesystem"] = iso.make_filesystem_read_only([cfg["work_dir"]])
        config_dir = os.environ.get("MPLCONFIGDIR")
        cfg["work_dir"], config_dir = iso.mount_private_tmp(cfg["work_dir"], config_dir)
        os.environ.update(HOME=cfg["work_dir"], TMPDIR=cfg["work_dir"])
        if config_dir:
            os.environ["MPLCONFIGDIR"] = config_dir
        tempfile = sys.modules.get("tempfile")
        if tempfile is not None:
            tempfile.tempdir = None  # the zygote may have cached the host's temp dir
        layers["private_tmp"] = True
    except OSError as exc:
        print(f"sandbox: read-only filesystem incomplete: {exc}", file=sys.stderr, flush=True)
        return
    if "masked_host_dirs" in cfg.get("disabled", ()):
        return
    try:
        layers["masked_host_dirs"] = bool(iso.mask_host_dirs(list(cfg.get("mask_dirs") or [])))
    except OSError as exc:
        print(f"sandbox: host directories not masked: {exc}", file=sys.stderr, flush=True)


def prepare_init(cfg: dict, layers: dict[str, bool], *, pid_namespace: bool) -> None:
    """The part of init that does not depend on the trajectory's data.

    Joins (or, at the zygote level, checks) the cgroups, unshares the network, mount, IPC and UTS
    namespaces, builds the filesystem view (read-only, private /tmp with ``cfg["work_dir"]`` at
    /tmp/work, masked host dirs) and mounts a private /proc when it is pid 1 of a PID namespace.
    """
    disabled = set(cfg.get("disabled", ()))
    try:
        if cfg.get("join_cgroups", True):  # the zygote level: born inside (the zygote joined)
            iso.join_cgroups(cfg.get("cgroups") or {})
        layers.update(iso.cgroup_membership(cfg.get("cgroups") or {}))
        layers.update(
            iso.unshare_namespaces(
                user=False if layers.get("user_namespace") else None,
                net="network_namespace" not in disabled,
                pid=False,
                mount="mount_namespace" not in disabled,
                ipc="ipc_namespace" not in disabled,
                uts="uts_namespace" not in disabled,
            )
        )
        for key in ("network_namespace", "mount_namespace", "ipc_namespace", "uts_namespace"):
            layers.setdefault(key, False)
        if layers["uts_namespace"]:
            layers["uts_namespace"] = iso.set_hostname()
    except BaseException as exc:  # noqa: BLE001
        print(f"sandbox set-up failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(EXIT_SETUP_FAILED)
    isolate_filesystem(cfg, layers)
    layers["pid_namespace"] = pid_namespace
    layers["private_proc"] = False
    if pid_namespace and layers.get("mount_namespace"):
        try:
            layers["private_proc"] = iso.mount_private_proc()
        except OSError as exc:
            print(f"sandbox: private /proc unavailable: {exc}", file=sys.stderr, flush=True)
    iso.set_oom_score_adj(-1000)
    if not pid_namespace:
        with contextlib.suppress(OSError):  # orphans of the worker come back here to be reaped
            iso.become_subreaper()


def run_init(
    cfg: dict, layers: dict[str, bool], started: float, *, pid_namespace: bool,
    status_fd: int | None = None, seccomp: object | None = None, worker: PreforkedWorker | None = None,
) -> None:  # fmt: skip
    """Fork the worker (the second fork inside the PID namespace, so the cells never run as
    pid 1) or hand the trajectory to ``worker``, forked in advance with the same settings; reap
    orphans, and when the worker exits kill everything left in the namespace, report the
    worker's exit code on ``status_fd`` (zygote level) and exit with it. Never returns."""
    init_pid = os.getpid()
    if layers.get("private_tmp"):
        limits = cfg.get("limits") or {}
        try:  # the work dir moves onto its own size-limited tmpfs (freed with the namespace)
            size_mb = int(limits.get("work_dir_mb", 256))
            cfg["work_dir"] = iso.mount_work_tmpfs(size_mb, cfg.get("uid"), cfg.get("gid"))
        except OSError as exc:
            print(f"sandbox: work dir not size-limited: {exc}", file=sys.stderr, flush=True)
    worker_pid = -1
    if worker is not None:
        try:
            worker.start(cfg, started)
            worker_pid = worker.pid
        except OSError:
            worker.discard()
    sys.stdout.flush()
    sys.stderr.flush()
    if worker_pid == -1:
        worker_pid = os.fork()
    if worker_pid == 0:
        try:
            if status_fd is not None:
                os.close(status_fd)
            iso.set_parent_death_signal(init_pid)
            worker_main(cfg, layers, started, seccomp)
        finally:
            os._exit(EXIT_SETUP_FAILED)
    _close_pipes(cfg)
    code = EXIT_SETUP_FAILED
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == worker_pid:
            code = _exit_code(status)
            break
    if pid_namespace:
        # Everything the cells left behind dies now, before the parent hears the exit code.
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
        while True:
            try:
                os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
    if status_fd is not None:
        with contextlib.suppress(OSError):
            os.write(status_fd, STATUS.pack(code))
    os._exit(code)


def trajectory_init(
    cfg: dict, layers: dict[str, bool], started: float, *, pid_namespace: bool,
    status_fd: int | None = None, seccomp: object | None = None,
) -> None:  # fmt: skip
    """The trajectory's init (:func:`prepare_init` then :func:`run_init`); never returns.

    Runs as pid 1 of a fresh PID namespace when ``pid_namespace``, else as a plain process (a
    child subreaper) that owns the trajectory's session.
    """
    prepare_init(cfg, layers, pid_namespace=pid_namespace)
    run_init(cfg, layers, started, pid_namespace=pid_namespace, status_fd=status_fd, seccomp=seccomp)


# --------------------------------------------------------------------------------------------
# level "process": a fresh interpreter per trajectory
# --------------------------------------------------------------------------------------------
def process_main(cfg: dict, started: float) -> None:
    """Started by ProcessSandbox: outer process -> (new PID namespace) init -> worker."""
    if cfg.get("disable_aslr"):
        with contextlib.suppress(OSError):
            iso.disable_aslr_and_reexec()
    disabled = set(cfg.get("disabled", ()))
    layers: dict[str, bool] = {}
    try:
        layers["parent_death_signal"] = iso.set_parent_death_signal(int(cfg["parent_pid"]))
        layers["new_session"] = iso.ensure_new_session()
        want_pid = bool(cfg.get("pid_namespace", True)) and "pid_namespace" not in disabled
        layers.update(iso.unshare_namespaces(net=False, pid=want_pid, mount=False, ipc=False, uts=False))
    except BaseException as exc:  # noqa: BLE001
        print(f"sandbox set-up failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(EXIT_SETUP_FAILED)
    if not layers.get("pid_namespace"):
        trajectory_init(cfg, layers, started, pid_namespace=False)
    init_pid = os.fork()
    if init_pid == 0:
        try:
            iso.set_parent_death_signal(None)
            trajectory_init(cfg, layers, started, pid_namespace=True)
        finally:
            os._exit(EXIT_SETUP_FAILED)
    _close_pipes(cfg)
    while True:
        try:
            _, status = os.waitpid(init_pid, 0)
        except InterruptedError:
            continue
        os._exit(_exit_code(status))


# --------------------------------------------------------------------------------------------
# level "zygote": one pre-imported process forks every trajectory's init
# --------------------------------------------------------------------------------------------
SPAWN_WITH_PID_NAMESPACE = b"P"
SPAWN_WITHOUT_PID_NAMESPACE = b"N"
PID_REPLY = struct.Struct(">i")


def _reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if pid == 0:
            return


def _receive_trajectory(fds: list[int]) -> tuple[dict, int]:
    """In a forked init: take the parent's fds (log becomes stdout/stderr) and read the config."""
    req_fd, resp_fd, status_fd, log_fd = fds
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    cfg = recv_message(req_fd)  # written by the parent before it asked for this trajectory
    if not cfg or cfg.get("op") != "config":
        os._exit(EXIT_PROTOCOL)
    cfg.update(req_fd=req_fd, resp_fd=resp_fd, preloaded=True)
    return cfg, status_fd


def _zygote_child(fds: list[int], closing: list[int], pid_namespace: bool, seccomp: object | None) -> None:
    """In a fork made on request: become the trajectory's init; never returns."""
    started = time.monotonic()
    try:
        for fd in closing:  # the zygote's control socket: a cell must never reach it
            os.close(fd)
        layers: dict[str, bool] = {"parent_death_signal": iso.set_parent_death_signal(None)}
        layers["new_session"] = iso.ensure_new_session()
        cfg, status_fd = _receive_trajectory(fds)
        trajectory_init(cfg, layers, started, pid_namespace=pid_namespace, status_fd=status_fd, seccomp=seccomp)
    finally:
        os._exit(EXIT_SETUP_FAILED)


def _standby_init(sock, static: dict, closing: list[int], seccomp: object | None) -> None:
    """A pre-forked init, pid 1 of its own PID namespace; never returns.

    Prepares everything that does not depend on the trajectory (:func:`prepare_init`, with the
    sandbox's base directory at /tmp/work) while the previous trajectory runs, then waits for
    the parent's fds. The trajectory's own work dir (a subdirectory of the base) is then
    bind-mounted over /tmp/work, which also hides the base directory, and :func:`run_init` forks
    the worker. This keeps two forks and the namespace and mount set-up off the critical path.
    """
    import socket

    try:
        for fd in closing:
            os.close(fd)
        layers: dict[str, bool] = {"parent_death_signal": iso.set_parent_death_signal(None)}
        layers["new_session"] = iso.ensure_new_session()
        cfg = {**static, "work_dir": static["base_dir"], "join_cgroups": False}
        prepare_init(cfg, layers, pid_namespace=True)
        worker = None
        if static.get("worker"):  # the sandbox's settings are known: fork and isolate it now
            settings = {**static["worker"], "disabled": static.get("disabled")}
            with contextlib.suppress(OSError):  # else run_init forks it on the spot
                worker = PreforkedWorker(settings, layers, seccomp, [sock.fileno()])  # a copy: it forks
        while True:
            try:
                msg, fds, _, _ = socket.recv_fds(sock, 16, 4)
                break
            except InterruptedError:
                continue
        started = time.monotonic()
        sock.close()
        if not msg or len(fds) != 4:
            os._exit(0)  # the zygote is gone, or shuts its standby down
        traj, status_fd = _receive_trajectory(fds)
        name = os.path.basename(str(traj["work_dir"]))
        if os.path.dirname(str(traj["work_dir"])) != static["base_dir"]:
            os._exit(EXIT_PROTOCOL)
        if layers.get("private_tmp"):
            traj["work_dir"] = iso.enter_work_dir(name)
        if worker is not None and not worker.matches(traj):
            worker.discard()
            worker = None
        run_init(traj, layers, started, pid_namespace=True, status_fd=status_fd, seccomp=seccomp, worker=worker)
    finally:
        os._exit(EXIT_SETUP_FAILED)


def _fork() -> int:
    """fork() with our buffered output flushed first; -1 if the kernel refuses."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        return os.fork()
    except OSError:
        return -1


def _fork_init(fds: list[int], closing: list[int], pidns_fd: int | None, seccomp: object | None) -> int:
    """Fork a trajectory's init on request (``pidns_fd``: into a fresh PID namespace)."""
    in_pidns = False
    if pidns_fd is not None:
        with contextlib.suppress(OSError):
            in_pidns = iso.unshare_pid_for_children()
    pid = _fork()
    if pid == 0:
        _zygote_child(fds, closing, in_pidns, seccomp)
    if in_pidns:
        _restore_pid_namespace(pidns_fd)
    return pid


def _fork_standby(static: dict, closing: list[int], pidns_fd: int, seccomp: object | None):
    """Pre-fork the next trajectory's init into a fresh PID namespace: (pid, socket) or None."""
    import socket

    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        iso.unshare_pid_for_children()
    except OSError:
        return None
    pid = _fork()
    if pid == 0:
        _standby_init(theirs, static, [*closing, ours.fileno()], seccomp)
    _restore_pid_namespace(pidns_fd)
    theirs.close()
    if pid < 0:
        ours.close()
        return None
    return pid, ours


def _restore_pid_namespace(pidns_fd: int) -> None:
    try:
        iso.restore_pid_namespace(pidns_fd)
    except OSError as exc:  # later forks would share the namespace: stop, be restarted
        print(f"zygote: cannot restore its PID namespace: {exc}", file=sys.stderr, flush=True)
        os._exit(EXIT_SETUP_FAILED)


def zygote_main(cfg: dict) -> None:
    """Pre-import once, then serve one trajectory init per spawn request; never returns.

    Control socket protocol (the parent is ZygoteSandbox): after start-up the zygote sends one
    framed JSON ``{"type": "ready", ...}``. Each request is one byte (``P``: new PID namespace,
    ``N``: none) with four fds attached (request pipe, response pipe, status pipe, log file); the
    reply is the init's pid as 4 bytes (-1 if the fork failed). A ``P`` request goes to the
    standby init pre-forked at the top of the loop (see :func:`_standby_init`), else a fork is
    made on the spot. The trajectory's configuration travels on the request pipe, so every loop
    iteration does the same work whatever the trajectory: forks start from the same interpreter
    state, which keeps replays deterministic. EOF on the socket (the parent is gone) ends the
    zygote; its inits then get SIGKILL.
    """
    import gc
    import socket

    if cfg.get("disable_aslr"):
        with contextlib.suppress(OSError):
            iso.disable_aslr_and_reexec()
    started = time.monotonic()
    os.chdir("/")
    ctl_fd = int(cfg["ctl_fd"])
    notes = iso.preimport_libraries() if cfg.get("preload", True) else []
    iso.interpreter_paths()  # cached: every fork needs it (masks, policy monitor)
    seccomp = None
    if "seccomp" not in cfg.get("disabled", ()):
        try:
            seccomp = iso.SeccompFilter()
        except OSError as exc:
            notes.append(f"seccomp filter unavailable: {exc}")
    pidns_fd = None
    if "pid_namespace" not in cfg.get("disabled", ()):
        with contextlib.suppress(OSError):
            pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    # Join the sandbox's cgroups after the imports (their memory stays charged to the owner) and
    # once, so every fork is born inside; never the OOM killer's victim (the cells' worker is).
    iso.join_cgroups(cfg.get("cgroups") or {})
    iso.set_oom_score_adj(-1000)
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        notes.append(f"zygote has {threads} threads before forking")
    send_message(
        ctl_fd,
        {"type": "ready", "pid": os.getpid(), "notes": notes, "startup_ms": (time.monotonic() - started) * 1000.0},
    )
    ctl = socket.socket(fileno=ctl_fd)
    closing = [ctl_fd] + ([pidns_fd] if pidns_fd is not None else [])
    static = {k: cfg.get(k) for k in ("base_dir", "mask_dirs", "cgroups", "disabled", "worker")}
    use_standby = pidns_fd is not None and bool(static["base_dir"])
    standby = None
    gc.collect()
    gc.freeze()  # the pre-imported heap stays shared with the forks (no collector writes to it)
    while True:
        if standby is None and use_standby:
            standby = _fork_standby(static, closing, pidns_fd, seccomp)
        try:
            msg, fds, _, _ = socket.recv_fds(ctl, 16, 4)
        except InterruptedError:
            continue
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)  # the parent closed the socket or died
        _reap_children()
        pid = -1
        if len(fds) == 4 and msg in (SPAWN_WITH_PID_NAMESPACE, SPAWN_WITHOUT_PID_NAMESPACE):
            if msg == SPAWN_WITH_PID_NAMESPACE and standby is not None:
                standby_pid, standby_sock = standby
                standby = None
                with contextlib.suppress(OSError):  # a dead standby: fork on the spot instead
                    socket.send_fds(standby_sock, [b"go"], fds)
                    pid = standby_pid
                standby_sock.close()
            if pid == -1:
                extra = [standby[1].fileno()] if standby is not None else []
                ns_fd = pidns_fd if msg == SPAWN_WITH_PID_NAMESPACE else None
                pid = _fork_init(fds, closing + extra, ns_fd, seccomp)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        try:
            ctl.sendall(PID_REPLY.pack(pid))
        except OSError:
            os._exit(0)


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------
def probe() -> None:
    """Report which layers this machine allows (used by isolation_report); touches nothing."""
    result = {"parent_death_signal": False, "no_new_privs": False}
    try:
        result["parent_death_signal"] = iso.set_parent_death_signal(None)
        result["no_new_privs"] = iso.set_no_new_privs()
    except OSError:
        pass
    result.update(iso.unshare_namespaces())
    result["read_only_filesystem"] = result["masked_host_dirs"] = result["uts_hostname"] = False
    if result["mount_namespace"]:
        with contextlib.suppress(OSError):
            result["read_only_filesystem"] = iso.make_filesystem_read_only([])
        with contextlib.suppress(OSError):
            result["masked_host_dirs"] = bool(iso.mask_host_dirs(["/root"])) or not os.path.isdir("/root")
    if result["uts_namespace"]:
        with contextlib.suppress(OSError):
            result["uts_namespace"] = iso.set_hostname()
    result["seccomp"] = False
    with contextlib.suppress(OSError):
        result["seccomp"] = iso.SeccompFilter().load()
    result["root"] = os.geteuid() == 0
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()


def main(argv: list[str]) -> None:
    started = time.monotonic()
    if len(argv) == 2 and argv[1] == "--probe":
        probe()
        return
    if len(argv) == 3 and argv[1] == "--zygote":
        zygote_main(json.loads(argv[2]))
        return
    process_main(json.loads(argv[1]), started)


if __name__ == "__main__":
    main(sys.argv)
