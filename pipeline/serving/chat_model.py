"""The registered model: an MLflow pyfunc that answers multi-turn chats with the fine-tuned weights.

    info = log_chat_model("runs/<dag>/<run>/train/model", registered_model_name="chat-model")   # promote does this

Input: OpenAI-style `messages` (a list of {role, content}; a `system` message replaces the trained one). Output:
one reply per conversation. Params: `max_new_tokens`, `temperature` (0 = greedy, the evaluation's decoding).
The scoring server also takes the classic form: {"dataframe_records": [{"messages": [...]}], "params": {...}}.

Logged as models-from-code (model_code.py + the whole pipeline package as code_paths), not as a pickle: MLflow 3.17
refuses to unpickle models by default, and a pickle ties the model to the exact classes of the day it was logged.
The weights stay at `artifacts/model` in the logged model: registry.download_weights and evaluate rely on that.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

import mlflow.pyfunc
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, Object, ParamSchema, ParamSpec, Property, Schema

from pipeline.storage import outputs

# What the model imports when it is loaded (pipeline.model.generation, .loading, .chat_format); all install from PyPI.
RUNTIME_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "pandas")
MESSAGE = Object([Property("role", DataType.string), Property("content", DataType.string)])
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(Array(MESSAGE), "messages")]),
    outputs=Schema([ColSpec(DataType.string)]),
    params=ParamSchema([ParamSpec("max_new_tokens", DataType.long, 48),
                        ParamSpec("temperature", DataType.double, 0.0)]),
)
CODE_FILE = Path(__file__).with_name("model_code.py")
PACKAGE = Path(__file__).resolve().parents[1]  # pipeline/: the model imports pipeline.model.* when it loads


class ChatModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        # torch and transformers are imported when the model is loaded, not when it is logged
        from pipeline.model import loading

        directory = context.artifacts["model"]
        self.tokenizer = loading.load_tokenizer(directory)
        self.model = loading.load_model(directory)
        # Serve with the system prompt the model was trained with, as evaluation scores it.
        config = outputs.train_config(directory)
        self.system_prompt = config.get("train.system_prompt")

    def predict(self, context, model_input, params=None):
        from pipeline.model import generation

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
            code_paths=[str(PACKAGE)],  # the pipeline package, as source files
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
