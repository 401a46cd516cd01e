"""The registered model: the tiny model logged by chat_model.log_chat_model (models-from-code, no pickle), served by
MLflow's own scoring server (`mlflow models serve --env-manager local`, what an MLflow user would run, and the
baseline of the serving benchmark) and asked a multi-turn question over HTTP. `make serve`'s OpenAI-compatible server
is tested in test_openai_serving.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.config import load_project
from pipeline.model import generation, loading
from pipeline.process.ports import free_port
from pipeline.serving import chat_model
from pipeline.tracking import registry, runs

REPO = Path(__file__).resolve().parents[2]
CONVERSATION = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi, how are you?"},
                {"role": "user", "content": "你好，你叫什么名字？"}]


@pytest.fixture
def weights(tiny_model_dir, tmp_path) -> Path:
    """The tiny model with larger random weights (it then talks instead of stopping at once), in a directory not
    named `model`, and the train_config.json that training writes beside the weights."""
    torch.manual_seed(0)
    model = loading.load_model(str(tiny_model_dir))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.3)
    out = tmp_path / "trained-weights"
    model.save_pretrained(out)
    loading.load_tokenizer(str(tiny_model_dir)).save_pretrained(out)
    (out / "train_config.json").write_text(json.dumps({"train.system_prompt": "You are a helpful chatbot."}))
    return out


@pytest.mark.timeout(180)
def test_registered_model_is_served_by_mlflow_over_http(make_config, weights, tmp_path):
    config = make_config()
    project = load_project(config)
    runs.connect(project)
    info = chat_model.log_chat_model(str(weights), project.registered_model)
    client = MlflowClient()
    client.set_registered_model_alias(project.registered_model, registry.CHAMPION, info.registered_model_version)
    logged = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "logged")))
    assert mlflow.models.Model.load(str(logged)).signature.params is not None
    assert not list(logged.rglob("python_model.pkl"))  # source code, not a pickle
    # the whole package travels with the model: loading it imports pipeline.model.*, not only pipeline.serving
    assert {"model", "serving", "data"} <= {p.name for p in (logged / "code" / "pipeline").iterdir()}
    assert not (logged / "code" / "ops").exists()  # operations tools are not part of the model
    requirements = (logged / "requirements.txt").read_text()
    assert "torch==" in requirements and "+cpu" not in requirements  # installable from PyPI
    # evaluate scores the champion from these weights
    champion_weights = registry.download_weights(project.registered_model, info.registered_model_version,
                                                 tmp_path / "champion")
    assert (champion_weights / "train_config.json").is_file()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w")
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    env = {**os.environ, "MLFLOW_TRACKING_URI": runs.tracking_uri(project),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # its uvicorn
    process = subprocess.Popen([mlflow_cli, "models", "serve", "-m", f"models:/{project.registered_model}@champion",
                                "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                               cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_ping(url, process, tmp_path / "serve.log")
        short = post(url, {"messages": CONVERSATION, "max_new_tokens": 2})[0]
        tokenizer = loading.load_tokenizer(str(weights))
        model = loading.load_model(str(weights))
        expected = generation.generate_replies(model, tokenizer, [CONVERSATION], "You are a helpful chatbot.",
                                               max_new_tokens=2)
        assert isinstance(short, str) and short == expected[0]  # the trained system prompt, greedy, 2 tokens
        assert 0 < len(tokenizer(short, add_special_tokens=False)["input_ids"]) <= 2
        records = post(url, {"dataframe_records": [{"messages": CONVERSATION}],
                             "params": {"max_new_tokens": 8, "temperature": 1.0}})
        assert isinstance(records["predictions"][0], str)
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its uvicorn worker
        process.wait(timeout=30)
        log.close()


def wait_for_ping(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no /ping answer in {timeout} s:\n{log.read_text()[-3000:]}")


def post(url: str, payload: dict):
    request = urllib.request.Request(f"{url}/invocations", json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())

