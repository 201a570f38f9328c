"""The sandbox child's entry point: isolates itself, then replays cells sent by the parent.

Three ways in, one hardened child (its code is the package :mod:`pipeline.sandbox.child`, plus
:mod:`pipeline.sandbox.protocol` and :mod:`pipeline.sandbox.isolation`):

* level "process" (:class:`pipeline.sandbox.process.ProcessSandbox`): ``python -s -P -B runner.py
  CONFIG_JSON``, a fresh interpreter per trajectory, started with a clean environment as its own
  session leader; the worker pre-imports the image libraries before it drops privileges
  (:func:`pipeline.sandbox.child.init.process_main`).
* level "zygote" (:class:`pipeline.sandbox.zygote.ZygoteSandbox`): ``python -s -P -B runner.py
  --zygote CONFIG_JSON`` starts one long-lived zygote per sandbox with a clean environment; it
  pre-imports the libraries once and forks each trajectory's init
  (:func:`pipeline.sandbox.child.zygote.zygote_main`).
* ``runner.py --probe``: which layers this machine allows (:mod:`pipeline.sandbox.child.probe`).

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
is no outer process; init reports the worker's exit code on a status pipe. Without a PID
namespace init is a plain process (a child subreaper) of the session. Every layer that the kernel
refuses is reported as False in the ready message instead of failing the start; the parent decides.

How the child's modules are found: this file runs as a script, and ``-P`` keeps its directory
(``-s`` the user site) off ``sys.path``, which stays as the interpreter set it. :func:`_bootstrap`
registers ``pipeline`` and ``pipeline.sandbox`` as empty packages rooted next to this file, without
running their ``__init__`` (the parent side: subprocess, threads, cgroups), so the child imports
exactly the modules it names and nothing else of the project. They are all imported here, before
the child masks the project directory; the ASLR re-exec comes first, so nothing is imported twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time


def _bootstrap() -> None:
    """Make ``pipeline.sandbox.*`` importable from this directory without any ``__init__``."""
    import importlib.machinery
    import importlib.util

    sandbox_dir = os.path.dirname(os.path.abspath(__file__))
    parent = None
    for name, path in (("pipeline", os.path.dirname(sandbox_dir)), ("pipeline.sandbox", sandbox_dir)):
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [path]
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        if parent is not None:
            setattr(parent, name.rpartition(".")[2], module)
        parent = module


def main(argv: list[str]) -> None:
    started = time.monotonic()
    if len(argv) == 2 and argv[1] == "--probe":
        from pipeline.sandbox.child.probe import probe

        probe()
        return
    zygote = len(argv) == 3 and argv[1] == "--zygote"
    cfg = json.loads(argv[2] if zygote else argv[1])
    if cfg.get("disable_aslr"):
        from pipeline.sandbox import isolation

        with contextlib.suppress(OSError):  # re-executes this interpreter once, with ASLR off
            isolation.disable_aslr_and_reexec()
    if zygote:
        from pipeline.sandbox.child.zygote import zygote_main

        zygote_main(cfg)
        return
    from pipeline.sandbox.child.init import process_main

    process_main(cfg, started)


if __name__ == "__main__":
    _bootstrap()
    main(sys.argv)
