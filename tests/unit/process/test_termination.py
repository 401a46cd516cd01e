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


AS_PID_1 = """
import os, signal, time
assert os.getpid() == 1, os.getpid()
{body}
os.kill(1, signal.SIGTERM)  # as the kubelet's SIGTERM: delivered only to a handler, the default action is ignored
time.sleep(30)
print("never printed")
"""
CLEANUP_SIGTERM = """
from pipeline.process import termination
termination.install()
try:
    os.kill(1, signal.SIGTERM)
    time.sleep(5)
except termination.StageTerminated as exc:
    print("cleanup:", exc, flush=True)
"""
AFTER_TRAINING = """
from pipeline.training.checkpoints import StopOnSigterm
callback = StopOnSigterm()
callback.install()
callback.on_train_begin(None, None, None)
callback.on_train_end(None, None, None)  # training done, checkpoint sealed; the stage logs and uploads on
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a PID namespace (unshare) needs root; CI and the containers tier run as root")
@pytest.mark.parametrize("body, code", [(CLEANUP_SIGTERM, 128 + signal.SIGTERM), (AFTER_TRAINING, 1)],
                         ids=["second-sigterm-while-cleaning-up", "sigterm-after-training-ended"])
def test_as_a_containers_pid_1_sigterm_ends_the_process_within_seconds(body, code):
    """Python is PID 1 in the images: re-raising SIGTERM with the default action is ignored there, and the pod ran
    until SIGKILL at the end of its 900 s grace period. A PID namespace makes this process PID 1, as in a container."""
    result = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", AS_PID_1.format(body=body)],
                            capture_output=True, text=True, timeout=25)
    assert result.returncode == code, result.stdout + result.stderr[-2000:]
    assert "never printed" not in result.stdout
    if body is AFTER_TRAINING:
        assert "StageTerminated: terminated by SIGTERM" in result.stderr
