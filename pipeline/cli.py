"""Command line: one subcommand per stage, each handing on one output URI (a path or models:/ URI, never data).

    python -m pipeline ingest   --config configs/embedded.yaml --run-date 2026-11-22
    python -m pipeline validate --config ... --run-date ... --dataset <ingest output>
    python -m pipeline train    --config ... --run-date ... --dataset <validated dataset>
    python -m pipeline evaluate --config ... --run-date ... --dataset ... --model <train output>
    python -m pipeline promote  --config ... --run-date ... --evaluation <evaluate output>
    python -m pipeline record-failure --config ... --run-date ... --run-id ... --task <task_id>   # failure callback

The URI becomes the task's XCom through a file, never through the log: the stage writes it as one JSON string to
$PIPELINE_XCOM_FILE, which every Airflow runtime sets and reads (dags/chat_retrain/runtimes.py), so a warning that
an interpreter prints at exit cannot become the next task's input. The stage also prints the URI as the last line
of its stdout, for a person or a script running a stage by hand; Airflow does not parse it. Logs go to stderr;
progress a person follows (stage started / done in, steps, replies) goes through pipeline/process/progress.py.
Exit codes: 0 ok, 1 the stage failed (e.g. validation), 2 bad config or arguments.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import logging
import os
import sys
import time
from pathlib import Path

from pipeline.config import ConfigError, RunContext, load_project, load_section, run_type_name
from pipeline.process import outcomes, progress, termination
from pipeline.storage import outputs

# stage -> (module, config class, inputs it takes as URIs)
STAGES = {
    "ingest": ("pipeline.ingest", "IngestConfig", []),
    "validate": ("pipeline.validate", "ValidateConfig", ["dataset"]),
    "train": ("pipeline.train", "TrainConfig", ["dataset"]),
    "evaluate": ("pipeline.evaluate", "EvaluateConfig", ["dataset", "model"]),
    "promote": ("pipeline.promote", "PromoteConfig", ["evaluation"]),
}


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.split("\n")[0])
    stages = root.add_subparsers(dest="stage", required=True)
    for stage, (_, _, inputs) in STAGES.items():
        sub = _run_arguments(stages.add_parser(stage, help=f"run the {stage} stage"))
        sub.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override config")
        for name in inputs:
            sub.add_argument(f"--{name}", required=True, help=f"{name} URI produced by the upstream task")
        # The deepspeed launcher appends --local_rank=N; the rank is read from the environment (LOCAL_RANK) instead.
        sub.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    failure = _run_arguments(stages.add_parser("record-failure", help="mark the DAG run's MLflow run FAILED"))
    failure.add_argument("--task", required=True, help="the Airflow task that failed")
    failure.add_argument("--error", default="", help="Airflow's error message")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _quiet_environment()
    if args.stage == "record-failure":  # the DAG's failure callback: not a stage, no config section of its own
        from pipeline.tracking import runs

        runs.record_failure(load_project(args.config), _context(args), args.task, args.error)
        return 0
    termination.install()  # SIGTERM fails the stage cleanly (runs ended FAILED, no scratch left), exit code 1
    sys.stdout.reconfigure(line_buffering=True)  # task logs stream live instead of arriving at exit
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Reported before the heavy imports (torch takes seconds), so the console shows the stage at once.
    started = time.monotonic()
    progress.stage_started(args.stage)
    try:
        code, error, output = _run_stage(args)
    except BaseException as exc:  # also Ctrl-C: a console never shows a stage as running forever
        progress.stage_finished(time.monotonic() - started, f"{type(exc).__name__}: {exc}"[:300])
        raise
    progress.stage_finished(time.monotonic() - started, error)
    if output is not None:
        _report(output)
    return code


def _report(output) -> None:
    """The output URI as the task's XCom and as stdout's last line, from one process per node, the first local one:
    under torchrun every rank returns the same run-scoped URI, and two ranks printing at once can interleave into
    one garbled line."""
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return
    _write_xcom(output)
    print(output, flush=True)  # for people and hand-run scripts; the runtimes read the XCom file


def _run_stage(args: argparse.Namespace) -> tuple[int, str | None, object]:
    """Run one stage: (exit code, error message for the progress console or None, output URI or None)."""
    module_name, config_class, inputs = STAGES[args.stage]
    module = importlib.import_module(module_name)
    try:
        project = load_project(args.config, args.set)
        config = load_section(args.config, args.stage, getattr(module, config_class), args.set)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2, f"config error: {exc}", None
    stage_inputs = {name: getattr(args, name) for name in inputs}
    if args.stage == "promote":  # a champion that moved since evaluate is compared again by evaluate itself
        stage_inputs["rescore"] = functools.partial(_evaluate_again, args, project)
    try:
        output = module.run(config, project, _context(args), **stage_inputs)
    except outcomes.Skipped as exc:  # the task and everything downstream of it are skipped, not failed
        print(f"{args.stage} skipped: {exc}", file=sys.stderr)
        return outcomes.SKIPPED_EXIT_CODE, f"skipped: {exc}", None
    except Exception as exc:  # the message is what a person reads in the Airflow task log
        logging.getLogger("pipeline").exception("stage %s failed", args.stage)
        print(f"{args.stage} failed: {exc}", file=sys.stderr)
        return 1, " ".join(f"{type(exc).__name__}: {exc}".split())[:300], None  # one line for the console
    return 0, None, output


def _evaluate_again(args: argparse.Namespace, project, dataset: str, model: str) -> None:
    """The evaluate stage of this DAG run, run again by promote on the same inputs (pipeline/promote.py)."""
    from pipeline import evaluate

    config = load_section(args.config, "evaluate", evaluate.EvaluateConfig, args.set)
    progress.stage_started("evaluate")
    started = time.monotonic()
    evaluate.run(config, project, _context(args), dataset=dataset, model=model)
    progress.stage_finished(time.monotonic() - started, None)
    progress.stage_started(args.stage)


def _write_xcom(output) -> None:
    """The task's XCom: the URI as a JSON string in PIPELINE_XCOM_FILE, set by every runtime of the DAG (a temp file,
    a container's /tmp, the Kubernetes sidecar's /airflow/xcom/return.json). Written atomically (temp + rename): a
    stage killed mid-write leaves no half URI."""
    path = os.environ.get("PIPELINE_XCOM_FILE")
    if path:
        outputs.write_json(Path(path), str(output))  # one line: the local runtime prints it as the last log line


def _date(value: str) -> str:
    try:
        return datetime.date.fromisoformat(value).isoformat()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a YYYY-MM-DD date") from exc


def _run_arguments(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments that identify a DAG run (and so its outputs and MLflow runs); every subcommand takes them."""
    sub.add_argument("--config", required=True, help="YAML config with one section per stage")
    sub.add_argument("--run-date", required=True, type=_date, help="logical date YYYY-MM-DD (data partition)")
    sub.add_argument("--run-id", help="run id scoping outputs and MLflow runs (default: manual__<date>)")
    sub.add_argument("--dag-id", default="manual", help="DAG id, recorded as an MLflow tag")
    sub.add_argument("--run-type", default="manual", type=run_type_name,
                     help="Airflow run type (scheduled/manual/backfill)")
    return sub


def _context(args: argparse.Namespace) -> RunContext:
    return RunContext(run_date=args.run_date, run_id=args.run_id or f"manual__{args.run_date}", dag_id=args.dag_id,
                      run_type=args.run_type)


def _quiet_environment() -> None:
    """Keep every tool offline and inside the project (no telemetry, no hub look-ups)."""
    for key, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                       "HF_DATASETS_OFFLINE": "1", "CHECKPOINT_DISABLE": "1", "GX_ANALYTICS_ENABLED": "false",
                       "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)
