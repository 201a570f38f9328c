"""Which isolation layers this machine allows (``runner.py --probe``, for isolation_report)."""

from __future__ import annotations

import contextlib
import json
import os
import sys

from pipeline.sandbox import isolation as iso


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

