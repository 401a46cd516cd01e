"""Which day each kind of run trains on, rendered by Airflow itself from real DagRuns (not from the DAG's source).

A scheduled run is created from the DAG's own timetable the way the scheduler creates it; `airflow tasks render`
then renders the ingest task's command for that run. The nightly run that fires at 02:00 UTC on D must train on
dt=D-1 (the last complete day); manual runs and backfills keep the date they are given.
"""

from __future__ import annotations

import ast
import datetime
import re
import subprocess
import sys
from pathlib import Path

import pytest

AIRFLOW = [str(Path(sys.executable).parent / "airflow")]
DAG_ID = "nightly_chat_retrain"
UTC = datetime.UTC


def airflow(*args: str) -> str:
    result = subprocess.run([*AIRFLOW, *args], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def rendered_run_date(run: str) -> tuple[str, str]:
    """The --run-date and --run-type of the ingest command Airflow renders for a run id or logical date."""
    rendered = airflow("tasks", "render", DAG_ID, "ingest", run)
    # the script names variables ("$PIPELINE_ARG_<n>"), the rendered values are the task's env (runtimes.shell_words)
    env = ast.literal_eval(re.search(r"# property: env\n# -+\n(\{.*\})\n", rendered).group(1))
    return tuple(env[re.search(rf'{flag} "\$(PIPELINE_ARG_\d+)"', rendered).group(1)]
                 for flag in ("--run-date", "--run-type"))


@pytest.fixture(scope="module")
def scheduler_dag(airflow_db):
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session

    airflow("dags", "reserialize")
    with create_session() as session:
        return SerializedDagModel.get_dag(DAG_ID, session=session)


def test_the_0200_run_on_day_d_trains_on_day_d_minus_1(scheduler_dag):
    from airflow.models.dagrun import DagRun
    from airflow.timetables.base import DataInterval, TimeRestriction
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    # The scheduler asks the timetable for the run after the last one it made (the night of the 22nd).
    last = DataInterval(datetime.datetime(2026, 11, 21, 2, tzinfo=UTC), datetime.datetime(2026, 11, 22, 2, tzinfo=UTC))
    info = scheduler_dag.timetable.next_dagrun_info(
        last_automated_data_interval=last, restriction=TimeRestriction(earliest=None, latest=None, catchup=True))
    assert info.run_after == datetime.datetime(2026, 11, 23, 2, tzinfo=UTC)  # fires at 02:00 on the 23rd
    run = scheduler_dag.create_dagrun(
        run_id=f"scheduled__{info.logical_date.isoformat()}", logical_date=info.logical_date,
        data_interval=info.data_interval, run_after=info.run_after, run_type=DagRunType.SCHEDULED,
        triggered_by=DagRunTriggeredByType.TIMETABLE, state=DagRunState.QUEUED)
    try:
        assert rendered_run_date(run.run_id) == ("2026-11-22", "scheduled")
    finally:  # a queued run left in the session's database would be run by the next test that starts a scheduler
        with create_session() as session:
            session.query(DagRun).filter(DagRun.dag_id == DAG_ID, DagRun.run_id == run.run_id).delete()


def test_manual_runs_keep_their_date(scheduler_dag):
    assert rendered_run_date("2026-11-20") == ("2026-11-20", "manual")


def test_backfills_keep_their_dates(scheduler_dag):
    """`make backfill START=.. END=..` asks for these logical dates; each run's ds is its own date."""
    plan = airflow("backfill", "create", "--dag-id", DAG_ID, "--from-date", "2026-11-01",
                   "--to-date", "2026-11-03T23:59:59", "--dry-run")
    assert re.findall(r"(2026-11-\d\d) 02:00:00\+00:00", plan) == ["2026-11-01", "2026-11-02", "2026-11-03"]
