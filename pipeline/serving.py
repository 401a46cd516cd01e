"""The registered model and its server: an MLflow pyfunc that answers multi-turn chats with the fine-tuned weights.

    python -m pipeline.serving --config configs/embedded.yaml --port 5001     # what `make serve` runs
    curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \
        -d '{"messages": [{"role": "user", "content": "Hello"}], "max_new_tokens": 48, "temperature": 0}'

Input: OpenAI-style `messages` (a list of {role, content}; a `system` message replaces the trained one). Output:
one reply per conversation. Params: `max_new_tokens`, `temperature` (0 = greedy, the evaluation's decoding).
The scoring server also takes the classic form: {"dataframe_records": [{"messages": [...]}], "params": {...}}.

Logged as models-from-code (chat_model_code.py + the pipeline package as code_paths), not as a pickle: MLflow 3.17
refuses to unpickle models by default, and a pickle ties the model to the exact classes of the day it was logged.
The weights stay at `artifacts/model` in the logged model: registry.download_weights and evaluate rely on that.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import mlflow.pyfunc
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, Object, ParamSchema, ParamSpec, Property, Schema

# What the model imports when it is loaded (pipeline.generation, .models, .chat_data); all install from PyPI.
RUNTIME_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "pandas")
MESSAGE = Object([Property("role", DataType.string), Property("content", DataType.string)])
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(Array(MESSAGE), "messages")]),
    outputs=Schema([ColSpec(DataType.string)]),
    params=ParamSchema([ParamSpec("max_new_tokens", DataType.long, 48),
                        ParamSpec("temperature", DataType.double, 0.0)]),
)
CODE_FILE = Path(__file__).with_name("chat_model_code.py")


class ChatModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from pipeline import models  # heavy imports only when the model is loaded, not when it is logged

        directory = context.artifacts["model"]
        self.tokenizer = models.load_tokenizer(directory)
        self.model = models.load_model(directory)
        # Serve with the system prompt the model was trained with, as evaluation scores it.
        config = json.loads((Path(directory) / "train_config.json").read_text())
        self.system_prompt = config.get("train.system_prompt")

    def predict(self, context, model_input, params=None):
        from pipeline import generation

        params = params or {}
        return generation.generate_replies(
            self.model, self.tokenizer, conversations(model_input), self.system_prompt,
            max_new_tokens=int(params.get("max_new_tokens", 48)), temperature=float(params.get("temperature", 0.0)),
        )


def conversations(model_input) -> list[list[dict]]:
    """The `messages` of each row as plain lists of {role, content}: schema enforcement hands over a DataFrame
    whose cells may be lists or numpy arrays of dicts."""
    rows = model_input["messages"] if hasattr(model_input, "columns") else [model_input["messages"]]
    return [[{"role": str(m["role"]), "content": str(m["content"])} for m in messages] for messages in rows]


def log_chat_model(model_dir: str, registered_model_name: str | None = None):
    """Log the weights in `model_dir` as a logged model (and as a new version of `registered_model_name` if given);
    returns the ModelInfo."""
    # MLflow stores a directory artifact under the directory's own name, and registry.download_weights expects
    # `artifacts/model`: stage the files as `model` (hard links beside the original: no copy; MLflow refuses
    # symlinks that lead out of the directory).
    with tempfile.TemporaryDirectory(dir=Path(model_dir).resolve().parent, prefix=".log-model-") as staging:
        weights = Path(staging) / "model"
        shutil.copytree(model_dir, weights, copy_function=_link_or_copy)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(CODE_FILE),
            artifacts={"model": str(weights)},
            code_paths=[str(Path(__file__).parent)],  # the pipeline package, as source files
            signature=SIGNATURE,
            pip_requirements=[f"{package}=={_public_version(package)}" for package in RUNTIME_PACKAGES],
            registered_model_name=registered_model_name,
        )


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, destination)


def _public_version(package: str) -> str:
    """torch 2.13.0+cpu is the local CPU build; PyPI knows it as 2.13.0 (a `+cpu` pin cannot be installed)."""
    return version(package).split("+", 1)[0]


def serve(config: str, port: int) -> int:
    """Replace this process with MLflow's scoring server for `models:/<name>@champion`, if there is a champion.
    The alias is resolved when the server starts: after a promotion or rollback, restart it."""
    from mlflow.tracking import MlflowClient

    from pipeline import registry, tracking
    from pipeline.config import load_project

    project = load_project(config)
    try:  # checked here, before the server starts: its own error for a missing alias is a long traceback
        tracking.connect(project)
        champion = registry.champion(MlflowClient(), project.registered_model)
    except RuntimeError as exc:  # the tracking server does not answer, or the registry fails: not "no champion"
        print(f"cannot ask the registry at {tracking.tracking_uri(project)}: {exc}", file=sys.stderr)
        return 1
    if champion is None:
        print(f"no champion yet for {project.registered_model!r}: run `make run` first", file=sys.stderr)
        return 1
    uri = f"models:/{project.registered_model}@{registry.CHAMPION}"
    print(f"serving {uri} (v{champion.version}) on http://127.0.0.1:{port}/invocations "
          f"(chat: make chat SERVE_PORT={port}); Ctrl-C stops it", flush=True)
    bin_dir = Path(sys.executable).parent  # mlflow runs `uvicorn` from PATH: the venv's, even when not activated
    mlflow_cli = str(bin_dir / "mlflow")
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(project),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    os.execve(mlflow_cli, [mlflow_cli, "models", "serve", "-m", uri, "--env-manager", "local",
                           "--host", "127.0.0.1", "--port", str(port)], env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.serving", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, default=5001, help="5000 is the MLflow server, 9000 S3, 8080 Airflow")
    args = parser.parse_args(argv)
    return serve(args.config, args.port)


if __name__ == "__main__":
    sys.exit(main())
