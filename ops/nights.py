"""`make nights N=14`: N consecutive nights of the dated chat feed through the real DAG, one after the other, as runs
that may move `champion` (manual runs, as the schedule's own would), then the trajectory.

    python -m ops.nights --nights 14 --config configs/nights.yaml            # the N days ending yesterday
    python -m ops.nights --nights 3 --config ... --end 2026-11-06 --feed data/feed --set train.replay=0
    python -m ops.nights --nights 14 --config configs/nights.yaml --resume    # after a kill: the nights not done

First the feed is published (ops/chat_feed.py, idempotent) to `--feed`, ending `--end` (default yesterday); then each
date runs through `ops.dag_run` (`airflow dags test`, the same driver as `make run`). After each night a row is
printed: conversations in, replayed, candidate / champion / base on tonight's test split, on the memory set and
on the anchor set, the decision and the wall time. A failed night is a row saying so, and the next night runs (as
the schedule would). At the end the table and a chart of the champion in force after each night against the base
model, on the anchor and memory sets, go to `runs/nights/<first>_<last>/` and to an MLflow run `nights <first>..
<last>` in the experiment, whose metrics are logged with step = night, so its chart view draws the trajectory;
each night's own DAG run is a row of the experiment's runs view. Last, what strategies are compared by
(strategy_summary): the gain of the model in force over the base model on the outside set with its 95% interval,
the worst change on the memory set at a promotion, promotions, wall times; `--summary-only` prints it (and the
table) again for nights that already ran.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from ops import chat_feed, dag_run, run_summary
from pipeline.config import RunContext, load_project
from pipeline.data import table
from pipeline.promotion import significance
from pipeline.storage import outputs
from pipeline.tracking import runs

KEY = "rougeL"  # the metric of the table's columns and the chart: defined for every set and every language
SETS = {"test": "", "memory": "memory_", "anchor": "anchor_"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = str(dag_run.config_with_overrides(args.config, args.overrides)) if args.overrides else args.config
    dates = night_dates(args.end, args.nights)
    if args.summary_only:  # the nights ran already: their table and what strategies are compared by
        rows = json.loads((trajectory_dir(config, dates) / "nights.json").read_text())
        print(format_table(rows) + "\n" + json.dumps(strategy_summary(config, rows), indent=1))
        return 0
    published = chat_feed.publish(args.feed, args.feed_end or args.end)
    print(f"feed {args.feed} ending {args.feed_end or args.end}: {published['written']} partitions written, "
          f"{published['unchanged']} unchanged", flush=True)
    progress = trajectory_dir(config, dates) / "nights.json"
    rows = done_nights(progress, dates) if args.resume else []
    if rows:
        print(f"resuming: {len(rows)} of {len(dates)} nights done ({progress})\n" + format_table(rows), flush=True)
    for number, date in enumerate(dates, start=1):
        if number <= len(rows):
            continue
        started = time.monotonic()
        code = dag_run.main(["--config", config, "--date", date], env=dict(os.environ))
        rows.append(night_row(config, number, date, code, time.monotonic() - started))
        outputs.write_json(progress, rows)  # after every night: a killed run resumes after the last night written
        print(format_table(rows[-1:], header=number == 1), flush=True)
    where = write_trajectory(config, dates, rows)
    print("\n" + format_table(rows) + f"\n\ntrajectory: {where}")
    print(json.dumps(strategy_summary(config, rows), indent=1))
    return 0 if all(row["ok"] for row in rows) else 1


def parse_args(argv):
    yesterday = datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1)
    parser = argparse.ArgumentParser(prog="python -m ops.nights", description=__doc__.split("\n")[0])
    parser.add_argument("--nights", type=int, default=14, help="how many consecutive nights")
    parser.add_argument("--config", required=True, help="stage config YAML; its ingest reads the feed")
    parser.add_argument("--end", type=datetime.date.fromisoformat, default=yesterday, help="the last night's date")
    parser.add_argument("--feed", default="s3://chat-logs/openai", help="where the feed is published")
    parser.add_argument("--feed-end", type=datetime.date.fromisoformat,
                        help="the feed's last day (default: --end); later puts other source days on the nights")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--summary-only", action="store_true", help="run nothing: summarize the nights that ran")
    parser.add_argument("--resume", action="store_true",
                        help="skip the nights of these dates already done (the rows written after each night), "
                             "run the rest: a run killed during a night reruns that night")
    args = parser.parse_args(argv)
    if args.nights < 1:
        parser.error("--nights must be >= 1")
    return args


def night_dates(end: datetime.date, count: int) -> list[str]:
    """The `count` consecutive dates ending `end`, oldest first."""
    return [(end - datetime.timedelta(days=n)).isoformat() for n in range(count - 1, -1, -1)]


def trajectory_dir(config: str, dates: list[str]) -> Path:
    return Path(load_project(config).runs_root) / "nights" / f"{dates[0]}_{dates[-1]}"


def done_nights(progress: Path, dates: list[str]) -> list[dict]:
    """The rows already written for the first nights of `dates`, in order (a night is done once its row is)."""
    rows = json.loads(progress.read_text()) if progress.is_file() else []
    done = []
    for row, date in zip(rows, dates, strict=False):
        if row["date"] != date:  # another range or order: these rows are not this run's
            raise SystemExit(f"--resume: {progress} holds night {row['night']} on {row['date']}, expected {date}")
        done.append(row)
    return done


def night_row(config: str, number: int, date: str, code: int, seconds: float) -> dict:
    """One night as the table shows it, read back from its partition and its MLflow runs."""
    project = load_project(config)
    experiment_id = runs.connect(project)
    client = MlflowClient()
    found = [r for r in run_summary.dag_runs(client, experiment_id, 50)
             if r.data.tags.get("airflow.logical_date", "")[:10] == date]
    run = found[0] if found else None  # the newest DAG run of that date
    metrics, tags = (run.data.metrics, run.data.tags) if run else ({}, {})
    manifest_path = outputs.partition_dir(project, table.DATASET, date) / outputs.MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    train, evaluate = _child(client, run, "train"), _child(client, run, "evaluate")
    scored = evaluate.data.metrics if evaluate else {}
    row = {"night": number, "date": date, "ok": code == 0, "seconds": round(seconds, 1),
           # tonight's own: a replay source's conversations (split 'replay') are in every partition, not new
           "conversations": sum(n for split, n in manifest.get("conversations_per_split", {}).items()
                                if split != table.REPLAY),
           "replayed": train.data.metrics.get("replay/conversations", 0) if train else 0,
           # replies the three models were scored by: generated tonight, and reused from the generation cache
           "generated": scored.get("evaluate/cache_misses", math.nan), "reused": scored.get("evaluate/cache_hits", math.nan),
           "decision": tags.get("promotion.decision", "failed" if code else "none")}
    for name, prefix in SETS.items():
        for model in ("candidate", "champion", "base"):
            row[f"{model}/{name}"] = metrics.get(f"{model}/{prefix}{KEY}", math.nan)
    return row


def strategy_summary(config: str, rows: list[dict], resamples: int = 2000) -> dict:
    """What strategies are compared by (docs/nights.md): the gain of the model in force after the last night over
    the base model on the outside (anchor) set, ROUGE-L and similarity with their 95% intervals (conversation
    bootstrap); the worst forgetting: the lowest gain on the memory set of a promoted candidate over the model it
    replaced; promotions; wall time per night (first, middle, last)."""
    project = load_project(config)
    runs.connect(project)
    client, last = MlflowClient(), rows[-1]
    in_force = ("candidate" if last["decision"] == "promoted"
                else "champion" if not math.isnan(last["champion/anchor"]) else None)
    summary = {"promotions": sum(row["decision"] == "promoted" for row in rows), "model_after_last_night": in_force,
               "seconds": {f"night {row['night']}": row["seconds"] for row in (rows[0], rows[len(rows) // 2], last)}}
    anchor = _samples(client, project, last["date"], "samples_anchor.parquet")
    if in_force and anchor is not None:
        summary["anchor_gain_over_base"] = _gains(anchor, in_force, "base", "anchor", resamples)
    forgetting = []
    for row in (r for r in rows if r["decision"] == "promoted"):
        memory = _samples(client, project, row["date"], "samples_memory.parquet")
        if memory is not None:
            replaced = "champion" if "champion" in memory else "base"
            forgetting.append({"night": row["night"], "vs": replaced,
                               **_gains(memory, "candidate", replaced, "memory", resamples)})
    if forgetting:
        summary["worst_memory_change"] = min(forgetting, key=lambda f: f["rougeL"]["gain"])
    return summary


def _samples(client, project, date: str, name: str):
    import pandas as pd

    found = [r for r in run_summary.dag_runs(client, runs.connect(project), 50)
             if r.data.tags.get("airflow.logical_date", "")[:10] == date]
    if not found:
        return None
    tags = found[0].data.tags
    ctx = RunContext(date, tags.get("airflow.run_id", ""), tags.get("airflow.dag_id", ""))
    path = outputs.run_dir(project, ctx, "evaluate") / name
    return pd.read_parquet(path) if path.is_file() else None


def _gains(samples, model: str, against: str, name: str, resamples: int) -> dict:
    paired = significance.PairedSamples(samples, [model, against], name)
    weights = significance.resample_weights(paired.groups, resamples, seed=0)
    found = {}
    for metric in (m for m in ("rougeL", "similarity") if paired.has(m)):  # similarity: where evaluate scored it
        c = significance.compare(paired, metric, model, against, threshold=0.0, lower_is_better=False,
                                 rule="improves", confidence=0.95, weights=weights, min_conversations=5)
        found[metric] = {"gain": round(c.gain, 2), "ci": [round(c.low, 2), round(c.high, 2)],
                         "p_better": round(c.p_value, 4), "conversations": c.conversations}
    return found


def _child(client, run, stage: str):
    if run is None:
        return None
    children = client.search_runs([run.info.experiment_id], order_by=["attributes.start_time DESC"],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}' and "
                                                f"tags.`pipeline.stage` = '{stage}'")
    return children[0] if children else None


def format_table(rows: list[dict], header: bool = True) -> str:
    cells = [f"{m[:4]}/{s}" for s in SETS for m in ("candidate", "champion", "base")]
    lines = [f"{'night':>5} {'date':10} {'convs':>5} {'replay':>6} " + " ".join(f"{c:>11}" for c in cells)
             + f" {'generated':>9} {'reused':>6} {'decision':>9} {'time':>7}"] if header else []
    for row in rows:
        values = " ".join(f"{row[f'{m}/{s}']:11.2f}" for s in SETS for m in ("candidate", "champion", "base"))
        lines.append(f"{row['night']:>5} {row['date']:10} {row['conversations']:>5} {row['replayed']:>6.0f} "
                     f"{values} {row['generated']:>9.0f} {row['reused']:>6.0f} {row['decision']:>9} {row['seconds']:>6.0f}s")
    return "\n".join(lines)


def champion_after(rows: list[dict], set_name: str) -> list[float]:
    """The score of the model in force after each night: tonight's candidate if promoted, else the champion scored
    tonight (the base model until something is promoted)."""
    found = []
    for row in rows:
        if row["decision"] == "promoted":
            found.append(row[f"candidate/{set_name}"])
        else:
            champion = row[f"champion/{set_name}"]
            found.append(champion if not math.isnan(champion) else row[f"base/{set_name}"])
    return found


def write_trajectory(config: str, dates: list[str], rows: list[dict]) -> Path:
    """runs/nights/<first>_<last>/ (nights.json, trajectory.png) and an MLflow run with the same, step = night."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    project = load_project(config)
    directory = trajectory_dir(config, dates)
    directory.mkdir(parents=True, exist_ok=True)
    outputs.write_json(directory / "nights.json", rows)
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for axis, set_name in zip(axes, ("anchor", "memory"), strict=True):
        nights = [row["night"] for row in rows]
        axis.plot(nights, champion_after(rows, set_name), marker="o", label="champion after the night")
        axis.plot(nights, [row[f"base/{set_name}"] for row in rows], marker="x", linestyle="--", label="base model")
        axis.set_title(f"{set_name} set, {KEY}", fontsize=10)
        axis.set_xlabel("night")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(directory / "trajectory.png", dpi=100)
    mlflow.set_experiment(experiment_id=runs.connect(project))
    with mlflow.start_run(run_name=f"nights {dates[0]}..{dates[-1]}", tags={"pipeline.level": "nights"}):
        for set_name in ("test", "anchor", "memory"):
            for step, value in enumerate(champion_after(rows, set_name), start=1):
                if not math.isnan(value):
                    mlflow.log_metric(f"champion/{set_name}_{KEY}", value, step=step)
            for step, row in enumerate(rows, start=1):
                if not math.isnan(row[f"base/{set_name}"]):
                    mlflow.log_metric(f"base/{set_name}_{KEY}", row[f"base/{set_name}"], step=step)
        mlflow.log_metric("nights/promoted", sum(row["decision"] == "promoted" for row in rows))
        mlflow.log_figure(figure, "trajectory.png")
        mlflow.log_artifact(str(directory / "nights.json"))
    plt.close(figure)
    return directory


if __name__ == "__main__":
    sys.exit(main())
