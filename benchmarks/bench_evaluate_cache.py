"""The evaluate stage on night 1 and night 2 of the embedded run: the generation cache's effect, measured.

    make bench-evaluate        # = python benchmarks/bench_evaluate_cache.py, with the stack's S3 + MLflow server

Two real nights of the DAG (`python -m ops.dag_run`, as `make run`), in an experiment and registered model of
their own so nothing else is champion and the cache starts empty: night 1 scores candidate + base (both computed);
night 2 scores candidate, champion (= night 1's candidate) and base, the last two from the cache. Then night 2's
evaluate command again with `evaluate.cache=false`: the same three-model work, uncached. Identical metrics: night 2's
base and champion scores must equal the uncached rerun's (and night 1's base / candidate).
Target (issue 15): evaluate >= 2x faster from night 2 on, identical metrics. Writes bench-results/evaluate_cache.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
NIGHTS = ("2026-11-20", "2026-11-21")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/embedded.yaml")
    parser.add_argument("--output", default="bench-results/evaluate_cache.json")
    parser.add_argument("--existing", action="store_true",
                        help="measure the config's own first two nights (e.g. `make run` twice after `make clean`)")
    args = parser.parse_args(argv)
    if args.existing:
        from pipeline.config import load_project

        name, overrides = load_project(args.config).experiment, []
    else:
        name = f"bench-evalcache-{int(time.time())}"
        overrides = [f"project.experiment={name}", f"project.registered_model={name}"]
        for date in NIGHTS:
            night = [sys.executable, "-m", "ops.dag_run", "--config", args.config, "--date", date]
            subprocess.run([*night, *(arg for o in overrides for arg in ("--set", o))], cwd=REPO, check=True)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name).experiment_id
    evaluations = client.search_runs([experiment], "tags.`pipeline.stage` = 'evaluate' and attributes.status = "
                                     "'FINISHED'", order_by=["start_time ASC"])[:2]
    assert len(evaluations) == 2, f"expected one evaluate run per night, found {len(evaluations)}"
    uncached, uncached_s = rerun_uncached(evaluations[1], args.config, overrides)
    seconds = [duration(run) for run in evaluations]
    scores = [metrics(run) for run in evaluations]
    same = {
        "night2_base_vs_uncached": same_scores(scores[1], uncached, "base/"),
        "night2_champion_vs_uncached": same_scores(scores[1], uncached, "champion/"),
        "night2_base_vs_night1_base": same_scores(scores[1], scores[0], "base/"),
    }
    speedup_vs_night1, speedup_vs_uncached = seconds[0] / seconds[1], uncached_s / seconds[1]
    result = {
        "benchmark": "evaluate_cache", "experiment": name, "nights": dict(zip(NIGHTS, seconds, strict=True)),
        "night2_uncached_seconds": uncached_s, "speedup_vs_night1": round(speedup_vs_night1, 2),
        "speedup_vs_night2_uncached": round(speedup_vs_uncached, 2), "identical_metrics": same,
        "cache_tags": {k: v for k, v in evaluations[1].data.tags.items() if k.startswith("evaluate.cache")},
        "target": ">= 2x faster evaluate from night 2 on, identical metrics",
        "row": {"what": "evaluate stage, embedded run (SmolLM2, every held-out test reply (148) + 32 anchor replies per model): night 1 "
                        "(candidate + base) vs night 2 (candidate computed, champion + base from the cache)",
                "result": f"night 1 {seconds[0]:.0f} s, night 2 {seconds[1]:.0f} s ({speedup_vs_night1:.2f}x); "
                          f"night 2 uncached {uncached_s:.0f} s ({speedup_vs_uncached:.2f}x); metrics identical: "
                          f"{'yes' if all(same.values()) else 'NO'}",
                "target": ">= 2x, identical metrics",
                "met": min(speedup_vs_night1, speedup_vs_uncached) >= 2 and all(same.values())},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def rerun_uncached(night2, config: str, overrides: list[str]) -> tuple[dict, float]:
    """Night 2's evaluate command again, cache off, in a run id of its own: the same inputs, the same three models."""
    from pipeline.config import RunContext, load_project
    from pipeline.storage.outputs import run_dir

    tags = night2.data.tags
    ctx = RunContext(tags["airflow.logical_date"][:10], tags["airflow.run_id"], tags["airflow.dag_id"])
    saved = json.loads((run_dir(load_project(config), ctx, "evaluate") / "evaluation.json").read_text())
    command = [sys.executable, "-m", "pipeline", "evaluate", "--config", config, "--run-date", ctx.run_date,
               "--run-id", f"bench-uncached-{int(time.time())}", "--dataset", saved["dataset"], "--model",
               saved["model"], *(arg for o in [*overrides, "evaluate.cache=false"] for arg in ("--set", o))]
    subprocess.run(command, cwd=REPO, check=True)
    run = MlflowClient().search_runs([night2.info.experiment_id], "tags.`pipeline.stage` = 'evaluate'",
                                     order_by=["start_time DESC"], max_results=1)[0]
    return metrics(run), duration(run)


def duration(run) -> float:
    return round((run.info.end_time - run.info.start_time) / 1000, 1)


def metrics(run) -> dict[str, float]:
    return dict(run.data.metrics)


def same_scores(left: dict, right: dict, prefix: str) -> bool:
    keys = {k for k in left if k.startswith(prefix)}
    return bool(keys) and all(abs(left[k] - right.get(k, float("nan"))) < 1e-9 for k in keys)


if __name__ == "__main__":
    raise SystemExit(main())
