"""Replay sandbox, level "process": one fresh, hardened child interpreter per trajectory.

Only how the child starts is specific to this level (``runner.py`` in a fresh interpreter with a
clean environment, see :func:`pipeline.sandbox.child.init.process_main`); everything else is the
shared parent side, :class:`~pipeline.sandbox.parent.ChildSandbox`.
"""

from __future__ import annotations

import json
import os
import subprocess

from pipeline.sandbox.base import InputImage
from pipeline.sandbox.parent import ChildHandle, ChildSandbox, child_command, child_environment


class ProcessSandbox(ChildSandbox):
    """Level "process": one fresh child interpreter per :meth:`replay` (per trajectory).

    Slow to start (the interpreter imports the image libraries each time, ~0.7 s) but shares
    nothing between trajectories; :class:`~pipeline.sandbox.zygote.ZygoteSandbox` applies the
    same layers to a fork of a pre-imported process instead.
    """

    level = "process"

    def _spawn(self, work_dir: str, ctl_dir: str, images: list[InputImage]) -> ChildHandle:
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        config = {**self._child_config(work_dir, images), "req_fd": req_r, "resp_fd": resp_w}
        log_path = os.path.join(ctl_dir, "child.log")
        oom_before = self.cgroup.oom_kills() if self.cgroup is not None else 0
        try:
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    child_command(self.python, json.dumps(config)),
                    env=child_environment(work_dir, self._mpl_dir),
                    cwd=work_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(req_r, resp_w),
                    start_new_session=True,  # setsid(): the child's pgid is its pid
                    close_fds=True,
                )
        except BaseException:
            for fd in (req_r, req_w, resp_r, resp_w):
                os.close(fd)
            raise
        os.close(req_r)
        os.close(resp_w)
        self.last_pid = proc.pid
        child = ChildHandle(proc, req_w, resp_r, log_path)
        child.oom_before = oom_before
        return child
