"""Named points where a fault test can hold a stage, so it can kill it (or its tracking server), or let another run
overtake it, exactly there.

    PIPELINE_FAILPOINT=promote.registered python -m pipeline promote ...
    PIPELINE_FAILPOINT=promote.start@backfill,evaluate.start@scheduled PIPELINE_FAILPOINT_HOLD=/tmp/hold-{point} ...

PIPELINE_FAILPOINT lists points, comma-separated. A point is a name, or `name@<run type>` to hold only the stages of
runs of that type (the nightly `scheduled` run, a `backfill`, a `manual` run), where the stage says its run type.
At a listed point the stage prints `failpoint <point> reached` on stderr, creates the hold file and waits while that
file exists: the test then sends kill -9 / SIGTERM, stops the MLflow server, or waits for another run, and deletes
the file to let the stage go on. The hold file is $PIPELINE_FAILPOINT_HOLD, with `{point}` replaced by the point
(so each point has a file of its own); unset, the stage is held until it is killed. Unset PIPELINE_FAILPOINT (every
real run): a dict lookup and nothing else. The faults themselves are real; this only makes "mid-way" a place
instead of a race.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ENV, HOLD_ENV = "PIPELINE_FAILPOINT", "PIPELINE_FAILPOINT_HOLD"


def hit(name: str, run_type: str | None = None) -> None:
    listed = os.environ.get(ENV)
    if not listed:
        return
    points = {point.strip() for point in listed.split(",")}
    point = next((p for p in (name, f"{name}@{run_type}" if run_type else None) if p in points), None)
    if point is None:
        return
    print(f"failpoint {point} reached", file=sys.stderr, flush=True)
    hold = os.environ.get(HOLD_ENV)
    if not hold:
        while True:  # no release file: held until killed
            time.sleep(0.05)
    release = Path(hold.replace("{point}", point))
    release.touch()
    while release.exists():
        time.sleep(0.05)
