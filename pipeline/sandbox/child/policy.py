"""The policy monitor: an audit hook in the worker that reports attempts on the host."""

from __future__ import annotations

import os

# Isolation is done by the namespaces, uid, seccomp and rlimits (isolation.py); this audit hook does not isolate
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

