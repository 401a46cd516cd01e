"""A real Airflow 3 backfill of the nightly DAG on the embedded stack, from one command:

    make backfill START=2026-11-01 END=2026-11-07            # = python -m pipeline.backfill --start ... --end ...

Airflow 3 only *queues* backfill runs (`airflow backfill create`); a scheduler and an api-server (which serves the
task execution API) must run them. This starts both for the backfill and stops them when every queued run has
finished. Backfill runs are run_type `backfill`: they write their own date's partition and run-scoped outputs,
train in the one-slot `training` pool, and never move the `champion` alias unless allow_backfill_promotion is set.
Exit status 1 if any run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from pipeline import services
from pipeline.distributed import free_port

DAG_ID = "nightly_chat_retrain"
TERMINAL = {"success", "failed"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--start", required=True, help="first logical date, YYYY-MM-DD (inclusive)")
    parser.add_argument("--end", required=True, help="last logical date, YYYY-MM-DD (inclusive)")
    parser.add_argument("--config", default="configs/embedded.yaml")
    parser.add_argument("--max-active-runs", type=int, default=2, help="runs in flight; training is still serial")
    parser.add_argument("--timeout", type=int, default=6 * 3600, help="seconds before giving up")
    parser.add_argument("--allow-promotion", action="store_true", help="let backfill runs move the champion")
    args = parser.parse_args(argv)

    env = _environment()
    airflow = [str(Path(sys.executable).parent / "airflow")]
    _check(airflow + ["dags", "reserialize"], env)
    _check(airflow + ["dags", "unpause", DAG_ID], env)
    conf = json.dumps({"config": args.config, "allow_backfill_promotion": args.allow_promotion})
    # Logical dates are the starts of the daily intervals (02:00): the end date's own run starts after midnight.
    _check(airflow + ["backfill", "create", "--dag-id", DAG_ID, "--from-date", args.start,
                      "--to-date", f"{args.end}T23:59:59",
                      "--max-active-runs", str(args.max_active_runs), "--reprocess-behavior", "completed",
                      "--dag-run-conf", conf], env)
    logs = Path(env["AIRFLOW_HOME"]) / "backfill-logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = [services.start(airflow + ["api-server", "--port", env["AIRFLOW__API__PORT"]], env,
                              logs / "api-server.log", Path.cwd())]
    try:
        _wait_for_api(env, started[0])  # task runners report to it from their first second
        started.append(services.start(airflow + ["scheduler"], env, logs / "scheduler.log", Path.cwd()))
        states = _wait(airflow, env, args.start, args.end, args.timeout)
    finally:
        for record in started:
            services.stop(record, timeout=60)
    for date, state in sorted(states.items()):
        print(f"{date} {state}")
    return 0 if states and all(state == "success" for state in states.values()) else 1


def _environment() -> dict[str, str]:
    """The embedded Airflow settings, plus what the api-server and the scheduler's task runners must share."""
    env, port = dict(os.environ), free_port()
    env.setdefault("AIRFLOW_HOME", str(Path.cwd() / ".airflow"))
    env.update({
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        # Tokens the api-server signs must verify in task runners: one secret for both, new per backfill.
        "AIRFLOW__API_AUTH__JWT_SECRET": env.get("AIRFLOW__API_AUTH__JWT_SECRET") or secrets.token_hex(32),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        # This scheduler only runs the backfill: unpausing the DAG must not also start tonight's scheduled run.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
    })
    return env


def _wait(airflow: list[str], env: dict, start: str, end: str, timeout: int) -> dict[str, str]:
    """Poll the metadata DB (cheap, unlike one `airflow dags list-runs` process per poll) until the runs finish."""
    from sqlalchemy import create_engine, text

    url = subprocess.run(airflow + ["config", "get-value", "database", "sql_alchemy_conn"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    engine = create_engine(url)
    query = text("SELECT logical_date, state FROM dag_run WHERE dag_id = :dag AND run_type = 'backfill'")
    deadline, states = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            rows = connection.execute(query, {"dag": DAG_ID}).all()
        states = {str(day)[:10]: state for day, state in rows if start <= str(day)[:10] <= end}
        if states and all(state in TERMINAL for state in states.values()):
            return states
        time.sleep(5)
    print(f"backfill did not finish in {timeout} s: {states}", file=sys.stderr)
    return {date: state if state in TERMINAL else "timed out" for date, state in states.items()}


def _wait_for_api(env: dict, server: dict, timeout: int = 180) -> None:
    url = f"http://127.0.0.1:{env['AIRFLOW__API__PORT']}/api/v2/monitor/health"
    if not services.wait_until(lambda: services.http_ok(url), server, timeout):
        raise SystemExit(f"api-server did not come up on {url}; see $AIRFLOW_HOME/backfill-logs/api-server.log")


def _check(command: list[str], env: dict) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[1:4])} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


if __name__ == "__main__":
    sys.exit(main())
