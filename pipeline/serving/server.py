"""The champion behind MLflow's scoring server: `make serve`, then `make chat` or a request.

    python -m pipeline.serving.server --config configs/embedded.yaml --port 5001     # what `make serve` runs
    curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \
        -d '{"messages": [{"role": "user", "content": "Hello"}], "max_new_tokens": 48, "temperature": 0}'

The request and reply shapes are the registered model's (pipeline/serving/chat_model.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline.config import load_project
from pipeline.tracking import registry, runs


def serve(config: str, port: int) -> int:
    """Replace this process with MLflow's scoring server for `models:/<name>@champion`, if there is a champion.
    The alias is resolved when the server starts: after a promotion or rollback, restart it."""
    project = load_project(config)
    try:  # checked here, before the server starts: its own error for a missing alias is a long traceback
        runs.connect(project)
        champion = registry.champion(MlflowClient(), project.registered_model)
    except RuntimeError as exc:  # the tracking server does not answer, or the registry fails: not "no champion"
        print(f"cannot ask the registry at {runs.tracking_uri(project)}: {exc}", file=sys.stderr)
        return 1
    if champion is None:
        print(f"no champion yet for {project.registered_model!r}: run `make run` first", file=sys.stderr)
        return 1
    uri = f"models:/{project.registered_model}@{registry.CHAMPION}"
    print(f"serving {uri} (v{champion.version}) on http://127.0.0.1:{port}/invocations "
          f"(chat: make chat SERVE_PORT={port}); Ctrl-C stops it", flush=True)
    bin_dir = Path(sys.executable).parent  # mlflow runs `uvicorn` from PATH: the venv's, even when not activated
    mlflow_cli = str(bin_dir / "mlflow")
    env = {**os.environ, "MLFLOW_TRACKING_URI": runs.tracking_uri(project),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    os.execve(mlflow_cli, [mlflow_cli, "models", "serve", "-m", uri, "--env-manager", "local",
                           "--host", "127.0.0.1", "--port", str(port)], env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.serving.server", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, default=5001, help="5000 is the MLflow server, 9000 S3, 8080 Airflow")
    args = parser.parse_args(argv)
    return serve(args.config, args.port)


if __name__ == "__main__":
    sys.exit(main())
