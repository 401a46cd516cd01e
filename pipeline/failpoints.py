"""Named points where a fault test can hold a stage, so it can kill it (or its tracking server) exactly there.

    PIPELINE_FAILPOINT=promote.registered python -m pipeline promote ...

At the named point the stage prints `failpoint <name> reached` on stderr, creates the file
$PIPELINE_FAILPOINT_HOLD (if set) and waits while that file exists: the test then sends kill -9 / SIGTERM, or
stops the MLflow server and deletes the file to let the stage run into the fault. Unset (every real run): a dict
lookup and nothing else. The faults themselves are real; this only makes "mid-way" a place instead of a race.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ENV, HOLD_ENV = "PIPELINE_FAILPOINT", "PIPELINE_FAILPOINT_HOLD"


def hit(name: str) -> None:
    if os.environ.get(ENV) != name:
        return
    print(f"failpoint {name} reached", file=sys.stderr, flush=True)
    hold = os.environ.get(HOLD_ENV)
    if not hold:
        while True:  # no release file: held until killed
            time.sleep(0.05)
    Path(hold).touch()
    while Path(hold).exists():
        time.sleep(0.05)
