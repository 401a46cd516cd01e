"""The champion behind an OpenAI-compatible API: `make serve`, then `make chat`, the `openai` client or any OpenAI
chat front end.

    python -m pipeline.serving.server --config configs/embedded.yaml      # what `make serve` runs
    curl -s 127.0.0.1:5001/v1/chat/completions -H 'Content-Type: application/json' \
        -d '{"model": "smollm2-chat", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 48}'

It serves `models:/<registered_model>@champion` and follows the alias (champion_follower.py): a promotion or `make
rollback` is served within `serve.poll_seconds`, without a restart. Started before anything is promoted, it answers
503 ("no champion yet") until a night promotes. Every exchange and its feedback are recorded (exchange_log.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import load_project, load_section
from pipeline.tracking import runs


@dataclass(frozen=True)
class ServeConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "Loopback by default: nothing outside this machine "
                                                             "reaches it unless this says so."})
    port: int = field(default=5001, metadata={"help": "5000 is the MLflow server, 9000 S3, 8080 Airflow."})
    poll_seconds: float = field(default=10.0, metadata={"help": "How often the champion alias is read."})
    drain_seconds: float = field(default=120.0, metadata={
        "help": "At a switch, how long requests in flight on the old version may take before it is unloaded."})
    max_tokens: int = field(default=96, metadata={"help": "A request's max_tokens when it sets none."})
    max_tokens_limit: int = field(default=1024, metadata={"help": "The largest max_tokens a request may ask for."})
    temperature: float = field(default=0.0, metadata={"help": "A request's temperature when it sets none: 0 = "
                                                              "greedy, the evaluation's decoding."})
    continuous_batching: bool = field(default=False, metadata={
        "help": "transformers' continuous batching (a paged cache, concurrent requests in one batch) instead of one "
                "generate() at a time."})
    log_uri: str | None = field(default=None, metadata={
        "help": "Where exchanges and feedback are recorded (local directory or s3://bucket/prefix), one partition "
                "a day; null: <runs_root>/served. The `served` ingest source reads it."})
    retention_days: int = field(default=30, metadata={"help": "Recorded days older than this are deleted."})

    def __post_init__(self):
        if self.retention_days < 1:
            raise ValueError(f"retention_days must be >= 1, got {self.retention_days}")
        if not 1 <= self.max_tokens <= self.max_tokens_limit:
            raise ValueError(f"max_tokens must be from 1 to max_tokens_limit ({self.max_tokens_limit}), "
                             f"got {self.max_tokens}")


def build(config_path: str, overrides: list[str] = ()):
    """The app `make serve` runs, and the pieces tests reach into."""
    from pipeline.serving import chat_requests, openai_api
    from pipeline.serving.champion_follower import ChampionFollower
    from pipeline.serving.engine import Engine
    from pipeline.serving.exchange_log import ExchangeLog

    project = load_project(config_path, overrides)
    config = load_section(config_path, "serve", ServeConfig, overrides)
    runs.connect(project)
    engine = Engine(config.continuous_batching)
    follower = ChampionFollower(project.registered_model, Path(project.runs_root), engine.load, engine.unload,
                                config.poll_seconds, config.drain_seconds)
    exchanges = ExchangeLog(config.log_uri or str(Path(project.runs_root) / "served"), config.retention_days)
    limits = chat_requests.Limits(project.registered_model, config.max_tokens, config.max_tokens_limit,
                                  config.temperature)
    return openai_api.build_app(follower, engine, exchanges, limits), config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.serving.server", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    import uvicorn

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app, config = build(args.config, args.overrides)
    print(f"serving the champion on http://{config.host}:{config.port}/v1 (chat: make chat SERVE_PORT={config.port});"
          " Ctrl-C stops it", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
