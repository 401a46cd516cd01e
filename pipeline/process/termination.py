"""SIGTERM (an Airflow timeout, a pod eviction, `kill`) ends a stage like an error instead of killing it outright:
the stage's MLflow runs are ended FAILED with the reason, its scratch output is removed (storage.atomic_dir) and the
exit code is 1; a second SIGTERM ends the process at once, also as a container's PID 1 (exit_now). Kubernetes
waits terminationGracePeriodSeconds before kill -9, Airflow its own grace period: time enough for that. The train
stage installs its own handler on top (pipeline/training/checkpoints.py StopOnSigterm): there a SIGTERM saves a
checkpoint first, and once training has ended this handler is back.
"""

from __future__ import annotations

import os
import signal


class StageTerminated(RuntimeError):
    """The stage received SIGTERM; the message names the signal."""


def install() -> None:
    signal.signal(signal.SIGTERM, terminate)


def terminate(signum, frame) -> None:
    signal.signal(signal.SIGTERM, _exit_now)  # a second SIGTERM while cleaning up ends the process at once
    raise StageTerminated("terminated by SIGTERM (a timeout or an eviction); a retry starts the stage again")


def _exit_now(signum, frame) -> None:
    exit_now(signum)


def exit_now(signum: int = signal.SIGTERM) -> None:
    """End the process at once, as the signal's default action would. Not by re-raising the signal alone: the
    kernel ignores a signal whose action is the default for PID 1, which Python is in a container without an init,
    so the pod would run on until SIGKILL at the end of its grace period. PID 1 exits with 128 + signum instead."""
    if os.getpid() != 1:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    os._exit(128 + signum)
