"""The stage command line: argument checks, the run type the backfill guard depends on, the output URI last."""

import os
import subprocess
import sys

import pytest

from pipeline import cli
from pipeline.config import run_type_name


@pytest.mark.parametrize("rendered, expected", [
    ("DagRunType.BACKFILL_JOB", "backfill"), ("backfill", "backfill"), ("DagRunType.SCHEDULED", "scheduled"),
    ("DagRunType.MANUAL", "manual"), ("scheduled", "scheduled"),
])
def test_run_type_accepts_airflows_enum_rendering(rendered, expected):
    assert run_type_name(rendered) == expected


def test_bad_date_and_missing_input_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as bad_date:
        cli.main(["ingest", "--config", "configs/tiny.yaml", "--run-date", "22/11/2026"])
    assert bad_date.value.code == 2 and "is not a YYYY-MM-DD date" in capsys.readouterr().err
    with pytest.raises(SystemExit) as missing:
        cli.main(["train", "--config", "configs/tiny.yaml", "--run-date", "2026-11-22"])
    assert missing.value.code == 2 and "--dataset" in capsys.readouterr().err


def test_the_deepspeed_launchers_local_rank_argument_is_accepted():
    args = cli.parser().parse_args(["train", "--config", "c.yaml", "--run-date", "2026-11-22", "--dataset", "d",
                                    "--local_rank=1"])
    assert args.stage == "train" and args.local_rank == 1


def test_the_output_uri_stays_the_last_line_after_the_progress_lines(make_config):
    # A bash task pushes its last line of output (stdout and stderr together) to XCom: progress must come before.
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_PROGRESS"}
    result = subprocess.run([sys.executable, "-m", "pipeline", "ingest", "--config", str(make_config()),
                             "--run-date", "2026-11-22"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, timeout=300)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and "[ingest] started" in lines and any(
        line.startswith("[ingest] done in ") for line in lines)
    assert lines[-1].endswith("conversations/dt=2026-11-22")
