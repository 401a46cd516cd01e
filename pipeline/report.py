"""Print the latest DAG runs from MLflow: headline metrics of candidate vs base and the promotion decision.

    python -m pipeline.report --config configs/embedded.yaml [--last 5]
"""

from __future__ import annotations

import argparse

import mlflow

from pipeline import tracking
from pipeline.config import load_project

COLUMNS = ["candidate/bleu", "base/bleu", "candidate/rougeL", "base/rougeL", "candidate/perplexity",
           "base/perplexity", "train/loss", "val/loss"]


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--config", required=True)
    args.add_argument("--last", type=int, default=5)
    options = args.parse_args()
    project = load_project(options.config)
    experiment_id = tracking.connect(project)
    runs = mlflow.search_runs([experiment_id], filter_string="tags.`pipeline.level` = 'dag_run'",
                              order_by=["start_time DESC"], max_results=options.last)
    print(f"MLflow experiment {project.experiment!r} at {project.tracking_uri}: last {len(runs)} DAG run(s)")
    for _, run in runs.iterrows():
        print(f"\n{run.get('tags.airflow.run_id')} (logical date {run.get('tags.airflow.logical_date')}), "
              f"status {run['status']}")
        for column in COLUMNS:
            value = run.get(f"metrics.{column}")
            if value is not None and value == value:
                print(f"  {column:24s} {value:10.3f}")
        print(f"  promotion: {run.get('tags.promotion.decision')} (version {run.get('tags.promotion.version')}): "
              f"{run.get('tags.promotion.reason')}")


if __name__ == "__main__":
    main()
