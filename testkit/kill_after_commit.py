"""Run a build module as ``python -m`` would, and SIGKILL its whole process group
right after its first batch commit: a kill point that does not depend on timing.

    python -m testkit.kill_after_commit flows.build_dataset --store ... --source ...

For the resume tests: the killed build has exactly one committed batch (commits
are serial in the driver, and nothing runs after the kill), so the re-run must
skip it and build the rest. Start the process with ``start_new_session=True`` so
the kill takes its workers and nothing else.
"""
from __future__ import annotations

import os
import runpy
import signal
import sys


def main() -> None:
    module, sys.argv = sys.argv[1], [sys.argv[1]] + sys.argv[2:]
    from pipelines.build import steps

    commit_batch = steps.commit_batch

    def commit_then_die(*args, **kwargs):
        version = commit_batch(*args, **kwargs)
        os.killpg(os.getpgid(0), signal.SIGKILL)  # the build, its Dask workers, everything in its session
        return version

    # commit_step (the build's and the flow's commit) calls steps.commit_batch
    steps.commit_batch = commit_then_die
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
