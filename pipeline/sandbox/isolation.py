"""Isolation steps shared by every replay-sandbox level (standard library only).

Used by the sandbox child (:mod:`pipeline.sandbox.child`, started as ``runner.py``) for both
levels: :class:`~pipeline.sandbox.process.ProcessSandbox` runs these steps in a fresh interpreter,
:class:`~pipeline.sandbox.zygote.ZygoteSandbox` in a fork of its pre-imported zygote. The parent
side uses only :func:`world_traversable`.
Every step is a small function that either applies its layer and returns True (after reading the
result back from the kernel where that is cheap) or raises ``OSError``; the caller records the
layer as missing instead of failing the start, and the parent decides whether that is acceptable.

Layers here: parent-death signal, own session, namespaces (user when not root, network, PID, mount,
IPC, UTS), read-only filesystem with a private /tmp, a size-limited tmpfs work dir, masked host
directories (an allowlist view of /: every top-level directory but the system ones, plus the
project and home) with the interpreter re-exposed read-only, private /proc, rlimits,
no_new_privs, dropped privileges, a seccomp-bpf filter (libseccomp through ctypes) and joining
the per-sandbox cgroups.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import resource
import signal
import sys

from pipeline.sandbox.protocol import EXIT_ORPHANED, EXIT_SETUP_FAILED

CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWNS = 0x00020000
NAMESPACE_FLAGS = (
    CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP
)
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
PRIVATE_WORK_DIR = "/tmp/work"  # the work dir as the cells see it when /tmp is private
PRIVATE_CONFIG_DIR = "/tmp/.mplconfig"
SANDBOX_HOSTNAME = "sandbox"
SYS_MOUNT_SETATTR = 442  # same number on every architecture (unified syscall table, Linux >= 5.12)
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_GET_NO_NEW_PRIVS = 39
PR_SET_NO_NEW_PRIVS = 38
ADDR_NO_RANDOMIZE = 0x0040000


# Host directories never masked even if they are the parent's cwd or $HOME: the interpreter and
# the system need them (the cells' view of them is read-only anyway).
_SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc", "/proc", "/sys",
                "/dev", "/run", "/var", "/tmp", "/boot", "/opt", "/srv", "/mnt", "/media", "/snap")  # fmt: skip

# Where other programs leave sockets and shared memory (a read-only mount does not stop connect()
# on a socket file): replaced by empty read-only tmpfs. (/tmp is private anyway.)
SCRATCH_DIRS = ("/dev/shm", "/dev/mqueue", "/run")

# The allowlist view of /: the only top-level directories the cells see as they are on the host
# (read-only). Every other top-level directory (/var, /srv, /mnt, /media, /opt, /home, /root,
# /work, /data, dataset disks ...) is masked by an empty tmpfs, with the interpreter's own
# directories below it re-exposed. /tmp is private, /run is a scratch dir (empty tmpfs).
ROOT_ALLOWLIST = ("usr", "lib", "lib32", "lib64", "libx32", "bin", "sbin", "etc", "proc", "dev", "sys",
                  "tmp", "run")  # fmt: skip

# Libraries model code uses. They are imported before the privilege drop (and, for the zygote,
# once before any fork), so nothing has to be found on disk by the unprivileged uid later.
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

# Syscalls the seccomp filter refuses with EPERM (socket, clone and clone3 get their own rules).
SECCOMP_DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "unshare", "setns", "bpf",
    "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load", "init_module",
    "finit_module", "delete_module", "reboot", "swapon", "swapoff", "pivot_root", "chroot",
    "open_by_handle_at", "name_to_handle_at", "open_tree", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "pidfd_getfd",
)  # fmt: skip

_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _libc_call(name: str, *args: int) -> int:
    fn = getattr(libc(), name)
    fn.restype = ctypes.c_long
    rc = fn(*[ctypes.c_ulong(a) for a in args])
    if rc == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return rc


# --------------------------------------------------------------------------------------------
# process attributes
# --------------------------------------------------------------------------------------------
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


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process (init without a PID namespace)."""
    _libc_call("prctl", PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    return True


def set_oom_score_adj(value: int) -> None:
    """-1000 for the sandbox's own init (never the OOM victim), 0 for the worker running cells."""
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as fh:
        fh.write(str(value))


# --------------------------------------------------------------------------------------------
# namespaces
# --------------------------------------------------------------------------------------------
def unshare_namespaces(
    *, user: bool | None = None, net: bool = True, pid: bool = True, mount: bool = True,
    ipc: bool = True, uts: bool = True,
) -> dict[str, bool]:  # fmt: skip
    """New network (only a DOWN loopback), PID, mount, IPC and UTS namespaces, as requested.

    Each namespace is unshared on its own so a missing one does not cost the others. Root
    unshares directly; an unprivileged caller first enters a new user namespace (``user=None``:
    exactly when not root). A PID namespace takes effect for the children forked afterwards.
    Only the requested namespaces appear in the result.
    """
    result: dict[str, bool] = {}
    if user is None:
        user = os.geteuid() != 0
    if user:
        result["user_namespace"] = False
        with contextlib.suppress(OSError):
            _libc_call("unshare", CLONE_NEWUSER)
            result["user_namespace"] = True
    for key, flag, wanted in (
        ("network_namespace", CLONE_NEWNET, net),
        ("pid_namespace", CLONE_NEWPID, pid),
        ("mount_namespace", CLONE_NEWNS, mount),
        ("ipc_namespace", CLONE_NEWIPC, ipc),
        ("uts_namespace", CLONE_NEWUTS, uts),
    ):
        if wanted:
            result[key] = False
            with contextlib.suppress(OSError):
                _libc_call("unshare", flag)
                result[key] = True
    return result


def unshare_pid_for_children() -> bool:
    """The next child forked is pid 1 of a fresh PID namespace (the caller's own pid does not change)."""
    _libc_call("unshare", CLONE_NEWPID)
    return True


def restore_pid_namespace(ns_fd: int) -> None:
    """Undo ``unshare(CLONE_NEWPID)`` for later children: they are born in our own namespace again.

    The zygote unshares a PID namespace, forks the trajectory's init into it, then calls this, so
    each trajectory gets a fresh namespace and the zygote itself never changes namespaces.
    """
    _libc_call("setns", ns_fd, CLONE_NEWPID)


def set_hostname(name: str = SANDBOX_HOSTNAME) -> bool:
    """In the new UTS namespace: a fixed hostname (the host's name stays hidden and unchanged)."""
    data = name.encode()
    fn = libc().sethostname
    fn.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    if fn(data, len(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sethostname: {os.strerror(err)}")
    return os.uname().nodename == name


# --------------------------------------------------------------------------------------------
# filesystem
# --------------------------------------------------------------------------------------------
def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    fn = libc().mount
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
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    fn = libc().syscall
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


def _is_under(path: str, root: str) -> bool:
    return root == "/" or path.startswith(root.rstrip("/") + "/")


@functools.lru_cache(maxsize=1)
def interpreter_paths() -> tuple[str, ...]:
    """The interpreter's installation (real paths): prefixes, standard library, site-packages.

    What must stay readable for lazy imports and package data. Deliberately not every
    ``sys.path`` entry: a ``.pth`` file of an editable install may point at the project source.
    """
    import site
    import sysconfig

    candidates = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    candidates |= {v for k, v in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib", "purelib", "platlib")}
    with contextlib.suppress(AttributeError):  # site.getsitepackages is missing in some virtualenvs
        candidates |= set(site.getsitepackages())
    return tuple(sorted({os.path.realpath(p) for p in candidates if p and os.path.isdir(p)}))


def _outermost(paths: list[str]) -> list[str]:
    result: list[str] = []
    for p in sorted(set(paths)):
        if not any(p == q or _is_under(p, q) for q in result):
            result.append(p)
    return result


def interpreter_dirs_under(root: str, hidden: tuple[str, ...] = ()) -> list[str]:
    """Interpreter directories strictly below ``root`` (outermost only) that contain none of
    ``hidden`` (so re-exposing them never re-exposes a masked project directory)."""
    inside = [
        p
        for p in interpreter_paths()
        if _is_under(p, root) and not any(h == p or _is_under(h, p) for h in hidden)
    ]
    return _outermost(inside)


def _bind_read_only(fd: int, target: str, root: str) -> None:
    """Bind the directory open as ``fd`` at ``target`` (creating its parents below ``root``)."""
    current = root
    for part in os.path.relpath(target, root).split(os.sep):
        current = os.path.join(current, part)
        with contextlib.suppress(FileExistsError):
            os.mkdir(current, 0o711)
    _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
    _mount_setattr(target, AT_RECURSIVE, attr_set=MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)


def mount_private_tmp(work_dir: str, config_dir: str | None) -> tuple[str, str | None]:
    """Replace /tmp by an empty read-only tmpfs holding only the work dir (and the matplotlib
    config dir), at fixed paths: the host's /tmp disappears from view and ``work_dir`` is the
    same for every replay, so printed paths are reproducible. An interpreter or virtualenv
    installed under /tmp (a CI checkout, say) stays visible, read-only. Returns the new paths.
    """
    fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in (work_dir, config_dir) if p]
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
            _bind_read_only(fd, path, "/tmp")
        _mount_setattr("/tmp", 0, attr_set=MOUNT_ATTR_RDONLY)
    finally:
        for fd in fds + keep_fds:
            os.close(fd)
    return PRIVATE_WORK_DIR, (PRIVATE_CONFIG_DIR if config_dir else None)


def enter_work_dir(name: str) -> str:
    """Bind ``/tmp/work/<name>`` over /tmp/work (read-write, nosuid, nodev); returns /tmp/work.

    For an init prepared before its trajectory was known, whose /tmp/work is the sandbox's base
    directory: afterwards only the trajectory's own directory is reachable there.
    """
    if not name or name in (".", "..") or os.sep in name:
        raise OSError(errno.EINVAL, f"bad work dir name {name!r}")
    _mount(os.path.join(PRIVATE_WORK_DIR, name), PRIVATE_WORK_DIR, None, MS_BIND)
    _mount_setattr(PRIVATE_WORK_DIR, 0, attr_set=MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, attr_clr=MOUNT_ATTR_RDONLY)
    return PRIVATE_WORK_DIR


def mount_work_tmpfs(size_mb: int, uid: int | None, gid: int | None) -> str:
    """Move the work dir (already at /tmp/work) onto a fresh tmpfs of ``size_mb`` MB.

    The files the parent put there (the inputs; regular files at the top level only) are copied
    over, owned by ``uid``/``gid``; the host directory stays hidden beneath. Writes beyond the
    size fail with ENOSPC, and the memory goes away with the trajectory's mount namespace. On
    failure after the mount, the tmpfs is detached again (the host work dir shows through) and
    the error raised. Returns /tmp/work.
    """
    size_mb = int(size_mb)
    if size_mb < 1:
        raise OSError(errno.EINVAL, f"bad work dir size {size_mb}")
    src = os.open(PRIVATE_WORK_DIR, os.O_RDONLY | os.O_DIRECTORY)
    try:
        owner = f",uid={int(uid)},gid={int(gid)}" if uid is not None and gid is not None else ""
        options = f"size={size_mb}m,nr_inodes=65536,mode=700{owner}"
        _mount("tmpfs", PRIVATE_WORK_DIR, "tmpfs", MS_NOSUID | MS_NODEV, options)
        try:
            with os.scandir(src) as entries:
                names = sorted(e.name for e in entries if e.is_file(follow_symlinks=False))
            for name in names:
                _copy_file(src, name, os.path.join(PRIVATE_WORK_DIR, name), uid, gid)
        except OSError:
            _detach(PRIVATE_WORK_DIR)
            raise
    finally:
        os.close(src)
    return PRIVATE_WORK_DIR


def _detach(target: str) -> None:
    """umount2(target, MNT_DETACH); exits the process if it fails (the view would be wrong)."""
    fn = libc().umount2
    fn.argtypes = [ctypes.c_char_p, ctypes.c_int]
    fn.restype = ctypes.c_int
    if fn(os.fsencode(target), MNT_DETACH) != 0:
        os._exit(EXIT_SETUP_FAILED)


def _copy_file(src_dir: int, name: str, target: str, uid: int | None, gid: int | None) -> None:
    fd_in = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=src_dir)
    try:
        fd_out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            while True:
                chunk = os.read(fd_in, 1 << 20)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd_out, view) :]
            if uid is not None and gid is not None:
                os.fchown(fd_out, uid, gid)
            os.fchmod(fd_out, 0o644)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)


def maskable_dirs(candidates: list[str]) -> list[str]:
    """The existing directories among ``candidates`` that may be masked (real paths, outermost).

    Never ``/``, the system trees (/usr, /etc, /var, /tmp ...), the interpreter's installation,
    or anything inside them.
    """
    keep = [*_SYSTEM_DIRS, *interpreter_paths()]
    result = []
    for path in candidates:
        if not path or not os.path.isabs(path):
            continue
        real = os.path.realpath(path)
        if real == "/" or not os.path.isdir(real):
            continue
        if any(real == s or _is_under(real, s) for s in keep):
            continue
        result.append(real)
    return _outermost(result)


def top_level_dirs_to_mask(allow: tuple[str, ...] = ROOT_ALLOWLIST) -> list[str]:
    """Top-level directories of / outside ``allow``: everything the allowlist view hides.

    Symlinks are skipped (their target is masked or allowed on its own), and so is a directory
    that is itself (or lies inside) an interpreter installation (e.g. ``/python``).
    """
    interp = interpreter_paths()
    result = []
    try:
        names = sorted(os.listdir("/"))
    except OSError:
        return result
    for name in names:
        path = "/" + name
        if name in allow or os.path.islink(path) or not os.path.isdir(path):
            continue
        if any(path == p or _is_under(path, p) for p in interp):
            continue
        result.append(path)
    return result


def mask_host_dirs(
    candidates: list[str], scratch: tuple[str, ...] = SCRATCH_DIRS, allow: tuple[str, ...] | None = ROOT_ALLOWLIST,
) -> list[str]:  # fmt: skip
    """Hide host directories behind empty tmpfs mounts: ``candidates`` (the project, $HOME,
    /root, /home) and, unless ``allow`` is None, every top-level directory not in ``allow``.

    Each mask is read-only, root-owned, mode 0711: it cannot be listed and holds nothing, except
    the interpreter directories found below it (a virtualenv in the project, pyenv under /root,
    conda under /opt), which are bind-mounted back read-only at the same paths so imports and
    data files keep working. The ``scratch`` directories (/dev/shm, /run ...) become empty
    read-only tmpfs (mode 0755) the same way. Returns the masked directories.
    """
    extra = top_level_dirs_to_mask(allow) if allow is not None else []
    masks = {m: "711" for m in _outermost([*maskable_dirs(candidates), *extra])}
    interp = interpreter_paths()
    for path in scratch:
        real = os.path.realpath(path)
        if os.path.isdir(real) and not any(real == p or _is_under(real, p) for p in interp):
            masks.setdefault(real, "755")
    requested = tuple(os.path.realpath(p) for p in candidates if p)
    keep = {m: interpreter_dirs_under(m, hidden=requested) for m in masks}
    fds = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for ps in keep.values() for p in ps}
    os.chdir("/")  # a cwd inside a masked directory would still reach the host's files
    try:
        for mask, mode in masks.items():
            _mount("tmpfs", mask, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size=64k,mode={mode}")
            for path in keep[mask]:
                _bind_read_only(fds[path], path, mask)
            _mount_setattr(mask, 0, attr_set=MOUNT_ATTR_RDONLY)
    finally:
        for fd in fds.values():
            os.close(fd)
    return list(masks)


def mount_private_proc() -> bool:
    """From pid 1 of the new PID namespace: a read-only /proc that shows only its processes."""
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    return True


# --------------------------------------------------------------------------------------------
# limits and privileges
# --------------------------------------------------------------------------------------------
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
    return _libc_call("prctl", PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1


def preimport_libraries(modules: tuple[str, ...] = PRELOAD_MODULES) -> list[str]:
    """Import (and warm the lazy parts of) the libraries model code uses; return failures.

    Runs no OpenCV work: the zygote forks afterwards, and forking a process whose OpenCV thread
    pool is running is unsafe.
    """
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


def world_traversable(path: str) -> bool:
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

    Needed only where the mount namespace (which re-exposes the interpreter below its masks) is
    unavailable. Opens each such directory now (as root) and replaces its entry by
    ``/proc/self/fd/N``: the magic link reaches the directory without search permission on its
    ancestors, while the directory's own (world-readable) permissions still apply. The
    ``__path__`` of already-imported packages (``encodings``, ``email``, ...) is rewritten too.
    """
    fds = []
    new_path = []
    moved: dict[str, str] = {}
    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue
        if world_traversable(entry):
            new_path.append(entry)
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        fds.append(fd)
        moved[entry.rstrip(os.sep) + os.sep] = f"/proc/self/fd/{fd}/"
        new_path.append(f"/proc/self/fd/{fd}")
    if not moved:
        return fds
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
# seccomp-bpf (libseccomp through ctypes)
# --------------------------------------------------------------------------------------------
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_NE = 1
SCMP_CMP_MASKED_EQ = 7
SCMP_FLTATR_CTL_TSYNC = 4


def _scmp_act_errno(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)


class _ScmpArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class SeccompFilter:
    """The sandbox's syscall filter, compiled once (the zygote builds it before forking).

    Default allow; EPERM for ``SECCOMP_DENIED``, for ``socket`` of any family but AF_UNIX, and for
    ``clone`` with any namespace flag; ENOSYS for ``clone3`` (its flags sit in a struct a filter
    cannot read; glibc then falls back to ``clone``, so threads and fork keep working). Errors,
    not kills, so a cell sees a Python exception. Syscalls of a foreign ABI (i386, x32) kill the
    process (libseccomp's bad-architecture action). ``TSYNC`` puts every thread under it.
    """

    def __init__(self) -> None:
        name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise OSError(errno.ENOSYS, f"libseccomp not available: {exc}") from exc
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.restype = ctypes.c_int
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ScmpArgCmp),
        ]  # fmt: skip
        lib.seccomp_attr_set.restype = ctypes.c_int
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_load.restype = ctypes.c_int
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        self._lib = lib
        self._ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
        if not self._ctx:
            raise OSError(errno.ENOMEM, "seccomp_init failed")
        self.unknown: list[str] = []  # syscalls this architecture does not have
        self._check(lib.seccomp_attr_set(self._ctx, SCMP_FLTATR_CTL_TSYNC, 1), "attr TSYNC")
        eperm = _scmp_act_errno(errno.EPERM)
        for syscall in SECCOMP_DENIED:
            self._rule(syscall, eperm)
        import socket

        self._rule("socket", eperm, (0, SCMP_CMP_NE, socket.AF_UNIX, 0))
        self._rule("clone3", _scmp_act_errno(errno.ENOSYS))
        flag = 1
        while flag <= NAMESPACE_FLAGS:  # one rule per flag: libseccomp ORs rules of one syscall
            if flag & NAMESPACE_FLAGS:
                self._rule("clone", eperm, (0, SCMP_CMP_MASKED_EQ, flag, flag))
            flag <<= 1

    @staticmethod
    def _check(rc: int, what: str) -> None:
        if rc != 0:
            raise OSError(-rc, f"seccomp {what}: {os.strerror(-rc)}")

    def _rule(self, syscall: str, action: int, *cmps: tuple[int, int, int, int]) -> None:
        nr = self._lib.seccomp_syscall_resolve_name(syscall.encode())
        if nr < 0:
            self.unknown.append(syscall)
            return
        array = (_ScmpArgCmp * len(cmps))(*[_ScmpArgCmp(*c) for c in cmps]) if cmps else None
        self._check(self._lib.seccomp_rule_add_array(self._ctx, action, nr, len(cmps), array), syscall)

    def load(self) -> bool:
        """Install the filter on the calling process (irrevocably); True once the kernel reports it."""
        self._check(self._lib.seccomp_load(self._ctx), "load")
        return seccomp_mode() == 2


def seccomp_mode() -> int:
    """The ``Seccomp:`` field of /proc/self/status (0 off, 1 strict, 2 filter)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Seccomp:"):
                return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------------------------
# cgroups (created and limited by the parent, see pipeline/sandbox/cgroups.py)
# --------------------------------------------------------------------------------------------
def join_cgroups(cgroups: dict[str, dict]) -> None:
    """Move this process into the sandbox's cgroups; children inherit them.

    ``cgroups``: controller ("memory", "pids") -> {"procs": the slot's ``cgroup.procs``, "path":
    the slot relative to its hierarchy, "version": 1 or 2}. Moving a process is slow (the kernel
    waits for an RCU grace period), so the zygote joins once and its forks are born inside.
    """
    pid = str(os.getpid())
    for controller, slot in sorted(cgroups.items()):
        try:
            with open(slot["procs"], "w") as fh:
                fh.write(pid)
        except OSError as exc:
            print(f"sandbox: cannot join the {controller} cgroup: {exc}", file=sys.stderr, flush=True)


def cgroup_membership(cgroups: dict[str, dict]) -> dict[str, bool]:
    """``cgroup_memory`` / ``cgroup_pids``: is this process in the sandbox's slot (read back from
    /proc/self/cgroup)?"""
    try:
        with open("/proc/self/cgroup") as fh:
            lines = fh.read().splitlines()
    except OSError:
        lines = []
    current: dict[tuple[int, str], str] = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[1]:
            for name in parts[1].split(","):
                current[(1, name)] = parts[2]
        else:
            current[(2, "")] = parts[2]
    result = {}
    for controller, slot in cgroups.items():
        key = (1, controller) if int(slot.get("version", 1)) == 1 else (2, "")
        result[f"cgroup_{controller}"] = current.get(key) == slot.get("path")
    return result
