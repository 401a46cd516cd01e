"""The champion served: the tiny model logged by chat_model.log_chat_model (models-from-code, no pickle), served by the
real `mlflow models serve --env-manager local` through `python -m pipeline.serving.server` (what `make serve` runs), and
asked a multi-turn question over HTTP, directly and through the chat REPL of `make chat`."""

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

from ops import chat
from pipeline.config import load_project
from pipeline.model import generation, loading
from pipeline.process.ports import free_port
from pipeline.serving import chat_model, server
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
def test_champion_is_served_over_http(make_config, weights, tmp_path, capsys, monkeypatch):
    config = make_config()
    project = load_project(config)
    assert server.main(["--config", str(config), "--port", "1"]) == 1  # nothing to serve yet: says so, fails
    assert "no champion yet" in capsys.readouterr().err

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
    process = subprocess.Popen([sys.executable, "-m", "pipeline.serving.server", "--config", str(config), "--port", str(port)],
                               cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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

        sent = []
        monkeypatch.setattr("builtins.input", typed(["Hello", "How are you?", "/reset", "Hi"]))
        monkeypatch.setattr(chat, "ask", recording(chat.ask, sent))
        assert chat.main(["--port", str(port), "--max-new-tokens", "4"]) == 0  # Ctrl-D after the last line
        assert [len(messages) for messages in sent] == [1, 3, 1]  # the history is kept, then reset
        assert capsys.readouterr().out.count("bot> ") == 3
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


def typed(lines: list[str]):
    """input() for a user who types `lines`, then Ctrl-D."""
    remaining = iter(lines)

    def read(prompt: str = "") -> str:
        try:
            return next(remaining)
        except StopIteration:
            raise EOFError from None

    return read


def recording(ask, sent: list):
    def record(url, messages, *args, **kwargs):
        sent.append(list(messages))
        return ask(url, messages, *args, **kwargs)

    return record
