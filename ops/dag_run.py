"""`make run`'s driver: one DAG run through `airflow dags test`, shown as progress a person can follow.

    python -m ops.dag_run --config configs/embedded.yaml --date 2026-11-22 [--verbose]
    python -m ops.dag_run --config ... --set train.precision=fp32 --set train.seed=7   # = make run SET="..."

Airflow's own output (hundreds of structured log lines) goes to $AIRFLOW_HOME/logs/dag-run-<date>-<time>.log,
named at the start; --verbose shows it here instead. The stages report their progress as JSON lines to a fresh
file (PIPELINE_PROGRESS, see pipeline/process/progress.py), which this follows and renders:

    [train] step 12/60  loss 2.31  ETA 3m10s
    [evaluate] candidate 64/96 replies (batch 2/3)
    [train] done in 4m02s

On failure it names the failed task, prints the end of that task's output from the log and exits non-zero.
Either way it ends with the run summary (ops/run_summary.py). The stages inherit this process's environment
(or main's `env`), e.g. MLFLOW_TRACKING_URI of a tracking server.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from pipeline.process import progress

DAG_ID = "nightly_chat_retrain"
TAIL_LINES = 30  # of the failed task's output: its traceback and the stage's own error message
POLL_S = 0.5
# Airflow's structured log: `2026-11-23T04:38:48.695Z [info     ] <message> [<logger>] key=value ...`
PREFIX = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z \[\w+\s*\] ")
STAGE_OUTPUT = re.compile(r"\s+\[airflow\.task\.hooks\.[\w.]+SubprocessHook\] loc=\S+\s*$")  # a stage's own line
TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(\w+)")
TASK_END = re.compile(r"\[DAG TEST\] end task task_id=")
RUN_ID = re.compile(r"\brun_id=([\w:.+\-]+)")
TASK_FAILED = re.compile(r"new_state=(failed|up_for_retry)\b")


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    args = parse_args(argv)
    if args.overrides:
        args.config = str(config_with_overrides(args.config, args.overrides))
    env = dict(os.environ if env is None else env)
    log_path, progress_path = output_paths(env, args.date)
    print(f"{DAG_ID} for {args.date}, config {args.config}")
    print(f"Airflow log: {log_path}" + ("" if args.verbose else "  (--verbose shows it here)"), flush=True)
    if not args.verbose:  # with --verbose the stages print their progress into Airflow's output instead
        env[progress.ENV] = str(progress_path)
    started = time.monotonic()
    code = run_airflow(airflow_command(args.date, args.config), env, log_path, progress_path, args.verbose)
    log_text = log_path.read_text(errors="replace") if log_path.is_file() else ""
    run_id = airflow_run_id(log_text)
    if code == 0:
        print(f"\nDAG run {run_id or ''} succeeded in {progress.duration(time.monotonic() - started)}")
    else:
        report_failure(code, log_text, progress_path, log_path)
    print(flush=True)
    subprocess.run(summary_command(args.config, run_id), env={k: v for k, v in env.items() if k != progress.ENV},
                   check=False)
    return 0 if code == 0 else 1


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m ops.dag_run", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="stage config YAML, passed as the DAG's `config` param")
    parser.add_argument("--date", default=datetime.date.today().isoformat(), help="logical date YYYY-MM-DD")
    parser.add_argument("--verbose", action="store_true", help="show Airflow's own output instead of progress")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override the config for this run (a derived config file is written and passed on)")
    return parser.parse_args(argv)


def config_with_overrides(config: str, overrides: list[str], directory: Path = Path("runs/configs")) -> Path:
    """The DAG takes a config *path* (its `config` param), so overrides become a config file of their own, named by
    its content: the same overrides give the same file, and the run's MLflow params show the resolved values."""
    from pipeline.config import apply_overrides, config_yaml, read_yaml

    text = config_yaml(apply_overrides(read_yaml(config), overrides))
    path = directory / f"{Path(config).stem}-{hashlib.sha256(text.encode()).hexdigest()[:8]}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {config} with {' '.join(overrides)} (python -m ops.dag_run --set)\n{text}")
    return path


def airflow_command(date: str, config: str) -> list[str]:
    # `airflow dags test` runs the whole DAG in this process tree, no scheduler; it exits 1 if a task failed.
    return [sys.executable, "-m", "airflow", "dags", "test", DAG_ID, date, "-c", json.dumps({"config": config})]


def summary_command(config: str, run_id: str | None) -> list[str]:
    # A separate process with the stages' environment: it reads the same MLflow store they wrote to.
    return [sys.executable, "-m", "ops.run_summary", "--config", config, *(["--run-id", run_id] if run_id else [])]


def output_paths(env: dict, date: str) -> tuple[Path, Path]:
    """A fresh log and progress file per invocation, so a rerun never replays an older run's events."""
    logs = Path(env.get("AIRFLOW_HOME", ".airflow")).resolve() / "logs"  # absolute: stages run in their own cwd
    logs.mkdir(parents=True, exist_ok=True)
    stem = f"dag-run-{date}-{datetime.datetime.now():%H%M%S}"
    return logs / f"{stem}.log", logs / f"{stem}.progress.jsonl"


def run_airflow(command: list[str], env: dict, log_path: Path, progress_path: Path, verbose: bool) -> int:
    """Run the DAG, following the progress file (or, verbose, the log itself) until Airflow exits."""
    renderer = progress.Renderer(sys.stdout, tty=sys.stdout.isatty())
    position = 0
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            while True:
                finished = process.poll() is not None  # read once more after exit: the last events
                position = echo(log_path, position) if verbose else progress.follow(str(progress_path), renderer,
                                                                                    position)
                if finished:
                    break
                time.sleep(POLL_S)
        except KeyboardInterrupt:  # stop Airflow and its stage, not just this console
            process.terminate()
            process.wait(timeout=60)
            print(f"\ninterrupted; Airflow's output: {log_path}")
            raise
        finally:
            renderer.close()
    return process.returncode


def echo(path: Path, position: int) -> int:
    with open(path, "rb") as handle:
        handle.seek(position)
        chunk = handle.read()
    sys.stdout.write(chunk.decode(errors="replace"))
    sys.stdout.flush()
    return position + len(chunk)


def airflow_run_id(log_text: str) -> str | None:
    """The run id `airflow dags test` created (`manual__<time>`): it scopes the run's outputs and MLflow runs."""
    for line in log_text.splitlines():
        if "creating dag run" in line or "Created dag run" in line:
            found = RUN_ID.search(line) or re.search(r": (manual__[\w:.+\-]+),", line)
            if found:
                return found.group(1)
    return None


def report_failure(code: int, log_text: str, progress_path: Path, log_path: Path) -> None:
    task = failed_task(log_text, progress_path)
    print(f"\nDAG run FAILED (airflow exit code {code})" + (f": task {task!r} failed" if task else ""))
    if task:
        print(f"--- last lines of {task}'s output ---")
        print("\n".join(task_output(log_text, task)[-TAIL_LINES:]))
        print("---")
    print(f"Airflow's whole output: {log_path}")


def failed_task(log_text: str, progress_path: Path) -> str | None:
    """The stage that reported a failure last (its own event), else the last task Airflow marked failed."""
    failed = None
    if progress_path.is_file():
        for raw in progress_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if event.get("event") == "stage_end" and event.get("status") == "failed":
                failed = event.get("stage")
    if failed:
        return failed
    task = None
    for line in log_text.splitlines():
        started = TASK_START.search(line)
        if started:
            task = started.group(1)
        elif task and TASK_FAILED.search(line):
            failed = task
    return failed or task  # nothing marked: the task that was running when Airflow stopped


def task_output(log_text: str, task: str) -> list[str]:
    """The task's last attempt: the stage command's own output (its error and traceback), without Airflow's
    prefix and logger suffix; all of the attempt's lines when the command printed nothing (e.g. it never started)."""
    attempts, current = [], None
    for line in log_text.splitlines():
        started = TASK_START.search(line)
        if started:
            current = {"stage": [], "all": []} if started.group(1) == task else None
            attempts += [current] if current is not None else []
        elif current is not None:
            if TASK_END.search(line):
                current = None
                continue
            text = PREFIX.sub("", line)
            current["all"].append(STAGE_OUTPUT.sub("", text))
            if STAGE_OUTPUT.search(text) and not text.startswith(("Tmp dir root", "Output:")):
                current["stage"].append(STAGE_OUTPUT.sub("", text))
    if not attempts:
        return log_text.splitlines()
    return attempts[-1]["stage"] or attempts[-1]["all"]


if __name__ == "__main__":
    raise SystemExit(main())
