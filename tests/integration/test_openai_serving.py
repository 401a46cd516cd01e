"""The champion behind the OpenAI-compatible API, through the official `openai` client: replies streamed and not,
the champion followed while a client streams, malformed requests refused by field, every exchange recorded with PII
masked, feedback stored, and the next night's `served` source keeping exactly the accepted exchanges."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
import torch
import uvicorn
from mlflow.tracking import MlflowClient

from ops import chat
from pipeline import ingest
from pipeline.config import load_project
from pipeline.ingest import IngestConfig
from pipeline.model import loading
from pipeline.process.ports import free_port
from pipeline.serving import chat_model, exchange_log, server
from pipeline.tracking import registry, runs

HELLO = [{"role": "user", "content": "Hello, write to me at ann.lee@example.com"}]


def trained(tiny_model_dir: Path, out: Path, seed: int) -> Path:
    """The tiny model with larger random weights (it talks instead of stopping at once), as training leaves it."""
    torch.manual_seed(seed)
    model = loading.load_model(str(tiny_model_dir))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.3)
    model.save_pretrained(out)
    loading.load_tokenizer(str(tiny_model_dir)).save_pretrained(out)
    (out / "train_config.json").write_text(json.dumps({"train.system_prompt": "You are a helpful chatbot."}))
    return out


@pytest.fixture
def serving(make_config, tiny_model_dir, tmp_path):
    """Two registered versions, v1 champion, and the server running on a free port in this process."""
    config = make_config(serve={"poll_seconds": 0.5, "log_uri": str(tmp_path / "served"), "max_tokens": 8})
    project = load_project(config)
    runs.connect(project)
    versions = [str(chat_model.log_chat_model(str(trained(tiny_model_dir, tmp_path / f"w{seed}", seed)),
                                          project.registered_model).registered_model_version) for seed in (1, 2)]
    app, _ = server.build(str(config))  # started before anything is promoted
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)
    yield project, versions, f"http://127.0.0.1:{port}", tmp_path / "served"
    uv.should_exit = True
    thread.join(timeout=30)


@pytest.mark.timeout(240)
def test_openai_client_chats_with_the_champion_that_follows_the_alias(serving):
    project, versions, url, log_dir = serving
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    name = project.registered_model
    with pytest.raises(openai.InternalServerError, match="no champion"):  # 503 until a night promotes
        client.chat.completions.create(model=name, messages=HELLO)
    assert client.models.list().data == []
    MlflowClient().set_registered_model_alias(name, registry.CHAMPION, versions[0])
    wait_for_version(client, versions[0])
    assert [(m.id, m.version) for m in client.models.list().data] == [(name, versions[0])]

    reply = client.chat.completions.create(model=name, messages=HELLO, max_tokens=6, temperature=0)
    assert reply.model == f"{name}/{versions[0]}" and reply.id.startswith("chatcmpl-")
    assert reply.choices[0].message.content and reply.usage.completion_tokens <= 6
    streamed = client.chat.completions.create(model=name, messages=HELLO, max_tokens=6, temperature=0, stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    # malformed requests: OpenAI-style 400s naming the field; an unknown model is a 404
    for bad, param in (({"max_tokens": 0}, "max_tokens"), ({"temperature": 3}, "temperature"),
                       ({"stop": [""]}, "stop"), ({"extra_body": {"tools": []}}, "tools")):
        extra = bad.pop("extra_body", None)
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=name, messages=HELLO, extra_body=extra, **bad)
        assert refused.value.body["param"] == param, refused.value.body
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=name, messages=[{"role": "assistant", "content": "hi"}])
    assert refused.value.body["param"] == "messages[0].role"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=HELLO)

    # the alias moves while a client streams: the stream ends whole, and the next reply is the new version's
    long = client.chat.completions.create(model=name, messages=HELLO, max_tokens=64, temperature=0, stream=True)
    first = next(iter(long))
    MlflowClient().set_registered_model_alias(name, registry.CHAMPION, versions[1])
    rest = list(long)
    assert first.model == f"{name}/{versions[0]}" and rest[-1].choices[0].finish_reason in ("stop", "length")
    wait_for_version(client, versions[1])
    after = client.chat.completions.create(model=name, messages=HELLO, max_tokens=6, temperature=0)
    assert after.model == f"{name}/{versions[1]}"

    # recorded: one exchange per completed reply, PII masked, the version that answered
    recorded = [json.loads(p.read_text()) for p in sorted(log_dir.glob("dt=*/*.jsonl"))]
    by_id = {r["id"]: r for r in recorded}
    assert {reply.id, after.id} <= set(by_id) and len(recorded) == 4
    assert by_id[reply.id]["messages"][0]["content"] == "Hello, write to me at <EMAIL>"
    assert by_id[reply.id]["messages"][-1] == {"role": "assistant", "content": reply.choices[0].message.content}
    assert (by_id[reply.id]["model_version"], by_id[after.id]["model_version"]) == tuple(versions)

    # feedback: stored beside its exchange; an unknown id is a 404, a bad rating a 400 naming it
    assert post(url, "/v1/feedback", {"id": reply.id, "rating": "up", "correction": "Hi! Mail me at a@b.io"}) == 200
    assert post(url, "/v1/feedback", {"id": after.id, "rating": "down"}) == 200
    assert post(url, "/v1/feedback", {"id": "chatcmpl-20260101-0", "rating": "up"}) == 404
    assert post(url, "/v1/feedback", {"id": reply.id, "rating": "meh"}) == 400
    stored = json.loads(next(log_dir.glob(f"dt=*/feedback/{reply.id}.json")).read_text())
    assert stored["rating"] == "up" and stored["correction"] == "Hi! Mail me at <EMAIL>"

    # the next night's ingest: exactly the exchange rated up, with its correction as the reply, named by its file
    day = exchange_log.day_of(reply.id)
    config = IngestConfig(sources=[{"format": "served", "uri": str(log_dir), "partitioned": True, "accept": "up"}])
    turns, quarantine, summary = ingest.collect(config, day)
    assert set(turns["source"]) == {f"{log_dir}/dt={day}/{reply.id}.jsonl"} and not quarantine
    assert turns.sort_values("turn_index")["text"].tolist() == ["Hello, write to me at <EMAIL>", stored["correction"]]
    counts = summary["counts"]
    assert (counts["served.corrected"], counts["dropped.rated_down"], counts["dropped.not_rated"]) == (1, 1, 2)


def test_make_chat_streams_a_multi_turn_conversation(serving, monkeypatch, capsys):
    project, versions, url, _ = serving
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert chat.main(["--port", url.rsplit(":", 1)[1]]) == 1  # nothing promoted: says so
    assert "run `make run` first" in capsys.readouterr().err
    MlflowClient().set_registered_model_alias(project.registered_model, registry.CHAMPION, versions[0])
    wait_for_version(client, versions[0])
    sent = []
    monkeypatch.setattr("builtins.input", typed(["Hello", "How are you?", "/reset", "Hi"]))
    monkeypatch.setattr(chat, "ask", recording(chat.ask, sent))
    assert chat.main(["--port", url.rsplit(":", 1)[1], "--max-tokens", "4"]) == 0  # Ctrl-D after the last line
    assert [len(messages) for messages in sent] == [1, 3, 1]  # the history is kept, then reset
    assert capsys.readouterr().out.count("bot> ") == 3


def wait_for_version(client: openai.OpenAI, version: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not client.models.list().data or client.models.list().data[0].version != version:
        assert time.monotonic() < deadline, f"version {version} was not served within {timeout} s"
        time.sleep(0.2)


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
    def record(client, model, messages, *args, **kwargs):
        sent.append(list(messages))
        return ask(client, model, messages, *args, **kwargs)

    return record


def post(url: str, path: str, payload: dict) -> int:
    request = urllib.request.Request(f"{url}{path}", json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
