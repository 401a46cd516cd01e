"""The links that open the MLflow UI on this project: the experiment, its DAG runs with candidate / champion / base
side by side, the registered model (`make ui`). How those pages are set up is pipeline/tracking/ui.py.

    python -m ops.ui_links --config configs/embedded.yaml --url http://127.0.0.1:5000
"""

from __future__ import annotations

import argparse
import sys

from pipeline.config import load_project
from pipeline.tracking import runs, ui


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.ui_links", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--url", default="http://127.0.0.1:5000", help="where the MLflow UI is served")
    args = parser.parse_args(argv)
    project = load_project(args.config)
    experiment_id = runs.connect(project)  # creates the experiment and sets its UI tags
    print(f"experiment {project.experiment}: {ui.experiment_url(args.url, experiment_id)}")
    print(f"DAG runs (candidate / champion / base): {ui.runs_url(args.url, experiment_id)}")
    print(f"registered model {project.registered_model}: {ui.model_url(args.url, project.registered_model)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
