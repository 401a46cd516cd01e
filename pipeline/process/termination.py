"""SIGTERM (an Airflow timeout, a pod eviction, `kill`) ends a stage like an error instead of killing it outright:
the stage's MLflow runs are ended FAILED with the reason, its scratch output is removed (storage.atomic_dir) and the
exit code is 1. Kubernetes waits terminationGracePeriodSeconds before kill -9, Airflow its own grace period: time
enough for that. The train stage installs its own handler on top (pipeline/training/checkpoints.py StopOnSigterm): there a
SIGTERM saves a checkpoint first.
"""

from __future__ import annotations

import signal


class StageTerminated(RuntimeError):
    """The stage received SIGTERM; the message names the signal."""


def install() -> None:
    signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM while cleaning up ends the process at once
    raise StageTerminated("terminated by SIGTERM (a timeout or an eviction); a retry starts the stage again")
