"""SIGTERM ends a stage like an error (so its MLflow runs end FAILED and its scratch output is removed), and a
second SIGTERM while cleaning up ends the process at once."""

import os
import signal
import subprocess
import sys

import pytest

from pipeline.process import termination

STAGE = """
import os, signal, sys, time
from pipeline.process import termination
termination.install()
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
except termination.StageTerminated as exc:
    print("cleanup:", exc, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # a second one while cleaning up
    time.sleep(5)
    print("never printed")
"""


def test_sigterm_raises_once_then_the_default_action_ends_the_process():
    result = subprocess.run([sys.executable, "-c", STAGE], capture_output=True, text=True, timeout=60)
    assert "cleanup: terminated by SIGTERM" in result.stdout and "never printed" not in result.stdout
    assert result.returncode == -signal.SIGTERM


def test_install_replaces_the_handler_in_this_process():
    previous = signal.getsignal(signal.SIGTERM)
    try:
        termination.install()
        with pytest.raises(termination.StageTerminated, match="a retry starts the stage again"):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
