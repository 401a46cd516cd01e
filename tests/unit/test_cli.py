"""The stage command line: argument checks and the run type the backfill guard depends on."""

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
