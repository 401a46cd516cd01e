"""A real Airflow 3 backfill of the nightly DAG on the embedded stack, from one command:

    make backfill START=2026-11-01 END=2026-11-07            # = python -m ops.backfill --start ... --end ...

Airflow 3 only *queues* backfill runs (`airflow backfill create`); a scheduler and an api-server (which serves the
task execution API) must run them. This starts both for the backfill and stops them when every queued run has
finished, which it learns from the api-server's public REST API (GET /api/v2/dags/<dag>/dagRuns, backfill runs of
the date range), never from Airflow's tables. That api-server listens on 127.0.0.1 only and lives as long as the
backfill: it runs the simple auth manager with every request an admin (as `make up` does), so polling needs no login.
Backfill runs are run_type `backfill`: they write their own date's partition and run-scoped outputs, train in the
one-slot `training` pool, and never move the `champion` alias unless allow_backfill_promotion is set.
Prints `<date> <state>` per run; exit status 1, naming the dates, if any run failed or did not finish in --timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
from pathlib import Path

from ops import services
from pipeline.process.ports import free_port

DAG_ID = "nightly_chat_retrain"
TERMINAL = {"success", "failed"}
POLL_S = 5
PAGE = 100  # the api-server's default [api] maximum_page_limit: longer ranges are read page by page


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
        states = _wait(_api_url(env), started[0], args.start, args.end, args.timeout)
    finally:
        for record in started:
            services.stop(record, timeout=60)
    return report(states, args.start, args.end, env["AIRFLOW_HOME"])


def report(states: dict[str, str], start: str, end: str, airflow_home: str) -> int:
    """`<date> <state>` per run on stdout; the dates that did not succeed on stderr. Exit status 0 only if all did."""
    for date, state in sorted(states.items()):
        print(f"{date} {state}")
    unsuccessful = [f"{date} ({state})" for date, state in sorted(states.items()) if state != "success"]
    if not states:
        print(f"no backfill runs of {DAG_ID} between {start} and {end}", file=sys.stderr)
    elif unsuccessful:
        print(f"backfill of {DAG_ID}: not successful: {', '.join(unsuccessful)}; task logs under "
              f"{airflow_home}/logs", file=sys.stderr)
    return 0 if states and not unsuccessful else 1


def _environment() -> dict[str, str]:
    """The embedded Airflow settings, plus what the api-server and the scheduler's task runners must share."""
    env, port = dict(os.environ), free_port()
    env.setdefault("AIRFLOW_HOME", str(Path.cwd() / ".airflow"))
    env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", services.airflow_sqlite(env["AIRFLOW_HOME"]))
    env.update({
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        # Tokens the api-server signs must verify in task runners: one secret for both, new per backfill.
        "AIRFLOW__API_AUTH__JWT_SECRET": env.get("AIRFLOW__API_AUTH__JWT_SECRET") or secrets.token_hex(32),
        # This private api-server's REST API answers the polling below without a login (localhost, backfill only).
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        # This scheduler only runs the backfill: unpausing the DAG must not also start tonight's scheduled run.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
    })
    return env


def _wait(api: str, server: dict, start: str, end: str, timeout: int) -> dict[str, str]:
    """Poll the REST API until every backfill run of the range has finished: {date: state}, unfinished runs marked
    "timed out" after `timeout` seconds."""
    deadline, states = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        try:
            states = backfill_states(api, start, end)
        except urllib.error.HTTPError as exc:
            if exc.code < 500:  # refused (auth, a bad filter): asking again for hours would not help
                raise SystemExit(f"the api-server refused {exc.url}: HTTP {exc.code} {exc.reason}") from exc
        except OSError as exc:  # a slow answer; without the api-server no task can report, so stop
            if not services.alive(server):
                raise SystemExit(f"the api-server stopped during the backfill ({exc}); see "
                                 "$AIRFLOW_HOME/backfill-logs/api-server.log") from exc
        if states and all(state in TERMINAL for state in states.values()):
            return states
        time.sleep(POLL_S)
    print(f"backfill did not finish in {timeout} s: {states}", file=sys.stderr)
    return {date: state if state in TERMINAL else "timed out" for date, state in states.items()}


def backfill_states(api: str, start: str, end: str) -> dict[str, str]:
    """{logical date: state} of the DAG's backfill runs from `start` to `end` (inclusive), all pages of
    GET /api/v2/dags/<dag>/dagRuns."""
    query = {"run_type": "backfill", "logical_date_gte": f"{start}T00:00:00Z",
             "logical_date_lte": f"{end}T23:59:59Z", "order_by": "logical_date", "limit": PAGE}
    states: dict[str, str] = {}
    offset = 0
    while True:
        url = f"{api}/api/v2/dags/{DAG_ID}/dagRuns?{urllib.parse.urlencode({**query, 'offset': offset})}"
        page = services.get_json(url, timeout=30)
        states.update({run["logical_date"][:10]: run["state"] for run in page["dag_runs"]})
        offset += len(page["dag_runs"])
        if not page["dag_runs"] or offset >= page["total_entries"]:
            return states


def _api_url(env: dict) -> str:
    return f"http://127.0.0.1:{env['AIRFLOW__API__PORT']}"


def _wait_for_api(env: dict, server: dict, timeout: int = 180) -> None:
    url = f"{_api_url(env)}/api/v2/monitor/health"
    if not services.wait_until(lambda: services.http_ok(url), server, timeout):
        raise SystemExit(f"api-server did not come up on {url}; see $AIRFLOW_HOME/backfill-logs/api-server.log")


def _check(command: list[str], env: dict) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[1:4])} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


if __name__ == "__main__":
    sys.exit(main())
