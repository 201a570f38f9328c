"""The sandbox child: isolates itself, then replays model-written cells sent by the parent.

Started as ``python -s -P -B pipeline/sandbox/runner.py ...`` (see that file for how it makes this
package importable without the parent-side packages). Imports nothing itself: each module imports
only the standard library, :mod:`pipeline.sandbox.protocol`, :mod:`pipeline.sandbox.isolation`
and its siblings here, all at start-up, before the child masks the project directory.

* :mod:`.capture`  -- per-cell capture: capped stdout/stderr, shown and written images as PNG
* :mod:`.cell`     -- :class:`~.cell.CellRunner`, one cell run in the trajectory's namespace (also
  run in-process by the sample-corpus generator for its own trusted cells)
* :mod:`.errors`   -- a cell's exception: its status (error, memory, forbidden) and traceback
* :mod:`.policy`   -- :class:`~.policy.PolicyMonitor`, the audit hook that reports attempts
* :mod:`.paths`    -- :class:`~.paths.PathMap`, the trajectory's own paths in the work dir
* :mod:`.worker`   -- the process that runs the cells (:class:`~.worker.Worker`), its isolation
  steps and the pre-forked worker of the zygote level
* :mod:`.init`     -- the trajectory's init (namespaces, filesystem, reaping) and the process level
* :mod:`.zygote`   -- the zygote level's fork server
* :mod:`.probe`    -- which layers this machine allows
"""
