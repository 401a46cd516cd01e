"""Benchmark: `make serve` (OpenAI-compatible, transformers' serving) against `mlflow models serve`, same champion,
same prompts, 1 / 4 / 8 concurrent streaming clients on loopback; then a champion swap under load.

    python benchmarks/bench_serving.py                       # make bench runs it; ~10 min on 2 cores
    python benchmarks/bench_serving.py --clients 1 4 --requests 2

Model: the real SmolLM2-135M-Instruct (fp32), registered in a scratch registry as the champion. Prompts: held-out
test dialogues of the real corpus (en + zh). Each client sends `--requests` chats one after another, `max_tokens`
48, greedy. Reported per server and client count: time to first token p50 / p95 (MLflow's server does not stream:
its first token comes with the whole reply), aggregate generated tokens per second, failed requests. Then the swap:
8 clients stream while the alias moves to another version; every request must succeed.
Targets (issue 27): >= 3x MLflow's aggregate tokens/s at 8 clients; p95 time to first token <= 1 s at 4 clients;
zero failed requests across the swap. Writes bench-results/serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import openai
import yaml
from mlflow.tracking import MlflowClient

from pipeline import ingest
from pipeline.config import ProjectConfig, load_project
from pipeline.model import chat_format, loading
from pipeline.process.ports import free_port
from pipeline.serving import chat_model
from pipeline.tracking import registry, runs

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=3, help="chats per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--output", default="bench-results/serving.json")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    config, versions = champion_registry(scratch)
    turns, _, _ = ingest.collect(ingest.IngestConfig(), "2026-11-22")
    prompts = [list(e.history) for e in chat_format.eval_examples(turns, "test")]
    results = {"benchmark": "serving", "model": ProjectConfig().base_model, "dtype": "float32",
               "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "requests_per_client": args.requests, "max_tokens": args.max_tokens, "servers": {}}
    servers = {"make serve (continuous batching)": ours(config, scratch, True),
               "make serve (one generate at a time)": ours(config, scratch, False),
               "mlflow models serve": mlflow_serve(config, scratch)}
    for name, start in servers.items():
        with start() as ask:
            ask(prompts[0], 4)  # warm-up: the model loaded, the first batch run
            results["servers"][name] = {str(n): load(ask, prompts, n, args.requests, args.max_tokens)
                                        for n in args.clients}
        print(json.dumps({name: results["servers"][name]}, indent=1), flush=True)
    with ours(config, scratch, True)() as ask:
        results["swap"] = swap_under_load(ask, config, versions, prompts, args.max_tokens)
    best = max((k for k in servers if k.startswith("make serve")),
               key=lambda k: results["servers"][k][str(max(args.clients))]["tokens_per_second"])
    top = str(max(args.clients))
    baseline = results["servers"]["mlflow models serve"][top]["tokens_per_second"]
    results["summary"] = {
        "engine": best, f"speedup_at_{top}_clients": round(
            results["servers"][best][top]["tokens_per_second"] / baseline, 2) if baseline else None,
        "ttft_p95_at_4_clients_s": results["servers"][best].get("4", {}).get("ttft_p95_s"),
        "failed_requests_across_swap": results["swap"]["failed"],
        "target": ">= 3x mlflow models serve tokens/s at 8 clients; p95 TTFT <= 1 s at 4; 0 failed across a swap"}
    summary = results["summary"]
    speedup, ttft = summary[f"speedup_at_{top}_clients"], summary["ttft_p95_at_4_clients_s"]
    results["row"] = {  # the line of docs/benchmarks.md (ops/bench_report.py)
        "what": f"serving SmolLM2-135M fp32: {best} vs mlflow models serve, {args.clients} streaming clients x "
                f"{args.requests} chats of {args.max_tokens} tokens; a champion swap under 8 clients",
        "result": f"{speedup}x tokens/s at {top} clients ({results['servers'][best][top]['tokens_per_second']} vs "
                  f"{baseline}); p95 time to first token at 4 clients {ttft} s; {results['swap']['failed']} failed "
                  "requests across the swap",
        "target": summary["target"],
        "met": bool(speedup and speedup >= 3 and ttft is not None and ttft <= 1 and not results["swap"]["failed"])}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(json.dumps(results["summary"], indent=2))


def champion_registry(scratch: Path) -> tuple[Path, list[str]]:
    """The real SmolLM2 as Hugging Face weights, registered twice (the swap moves between them), v1 champion."""
    raw = yaml.safe_load((REPO / "configs" / "embedded.yaml").read_text())
    raw["project"].update(data_root=str(scratch / "data"), runs_root=str(scratch / "runs"),
                          tracking_uri=f"sqlite:///{scratch / 'mlflow.db'}", artifact_root=str(scratch / "artifacts"))
    raw["serve"] = {"log_uri": str(scratch / "served"), "poll_seconds": 2.0}
    config = scratch / "config.yaml"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True))
    project = load_project(config)
    weights = scratch / "weights"
    loading.load_model(project.base_model).save_pretrained(weights)
    loading.load_tokenizer(project.base_model).save_pretrained(weights)
    (weights / "train_config.json").write_text(json.dumps({"train.system_prompt": "You are a helpful chatbot."}))
    runs.connect(project)
    versions = [str(chat_model.log_chat_model(str(weights), project.registered_model).registered_model_version)
                for _ in range(2)]
    MlflowClient().set_registered_model_alias(project.registered_model, registry.CHAMPION, versions[0])
    return config, versions


class Server:
    """A server process on a free port, stopped on exit; `ask(messages, max_tokens)` -> (ttft_s, tokens)."""

    def __init__(self, command: list[str], env: dict, ready: str, ask_factory, log: Path):
        self.command, self.env, self.ready, self.ask_factory, self.log = command, env, ready, ask_factory, log

    def __enter__(self):
        self.out = self.log.open("w")
        self.process = subprocess.Popen(self.command, env=self.env, stdout=self.out, stderr=subprocess.STDOUT,
                                        start_new_session=True, cwd=REPO)
        deadline = time.monotonic() + 300
        while True:
            assert self.process.poll() is None, f"server exited:\n{self.log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(self.ready, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, f"no answer in 300 s:\n{self.log.read_text()[-3000:]}"
                time.sleep(1)
        return self.ask_factory()

    def __exit__(self, *exc):
        os.killpg(self.process.pid, 15)
        self.process.wait(timeout=60)
        self.out.close()


def ours(config: Path, scratch: Path, continuous_batching: bool):
    port = free_port()
    command = [sys.executable, "-m", "pipeline.serving.server", "--config", str(config), "--set", f"serve.port={port}",
               "--set", f"serve.continuous_batching={str(continuous_batching).lower()}"]
    project = load_project(config)

    def ask_factory():
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0, timeout=600)

        def ask(messages, max_tokens):
            started, first, tokens = time.perf_counter(), None, 0
            for chunk in client.chat.completions.create(model=project.registered_model, messages=messages,
                                                        max_tokens=max_tokens, temperature=0, stream=True):
                if chunk.choices and chunk.choices[0].delta.content and first is None:
                    first = time.perf_counter() - started
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            return first if first is not None else time.perf_counter() - started, tokens

        return ask

    return lambda: Server(command, dict(os.environ), f"http://127.0.0.1:{port}/health", ask_factory,
                          scratch / f"serve-cb{int(continuous_batching)}.log")


def mlflow_serve(config: Path, scratch: Path):
    port, project = free_port(), load_project(config)
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{project.registered_model}@champion",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": runs.tracking_uri(project),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    tokenizer = loading.load_tokenizer(project.base_model)

    def ask_factory():
        def ask(messages, max_tokens):
            body = json.dumps({"messages": messages, "max_new_tokens": max_tokens, "temperature": 0}).encode()
            started = time.perf_counter()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                             {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=600) as response:
                reply = json.loads(response.read())
            reply = (reply["predictions"] if isinstance(reply, dict) else reply)[0]
            return time.perf_counter() - started, len(tokenizer(reply, add_special_tokens=False)["input_ids"])

        return ask

    return lambda: Server(command, env, f"http://127.0.0.1:{port}/ping", ask_factory, scratch / "mlflow-serve.log")


def load(ask, prompts: list, clients: int, requests: int, max_tokens: int) -> dict:
    """`clients` threads, each sending `requests` chats in turn; latencies and tokens of all of them."""
    results, failures = [], []

    def client(number: int) -> None:
        for index in range(requests):
            try:
                results.append(ask(prompts[(number * requests + index) % len(prompts)], max_tokens))
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}"[:200])

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    ttfts = sorted(r[0] for r in results)
    return {"requests": len(results) + len(failures), "failed": len(failures), "failures": failures[:3],
            "seconds": round(seconds, 2), "tokens": sum(r[1] for r in results),
            "tokens_per_second": round(sum(r[1] for r in results) / seconds, 1),
            "ttft_p50_s": round(statistics.median(ttfts), 3) if ttfts else None,
            "ttft_p95_s": round(ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))], 3) if ttfts else None}


def swap_under_load(ask, config: Path, versions: list[str], prompts: list, max_tokens: int) -> dict:
    """8 clients stream while the alias moves to the other version (mid-run); every request must succeed."""
    project = load_project(config)
    runs.connect(project)
    mover = threading.Timer(5.0, lambda: MlflowClient().set_registered_model_alias(
        project.registered_model, registry.CHAMPION, versions[1]))
    mover.start()
    outcome = load(ask, prompts, 8, 4, max_tokens)
    mover.join()
    return {**outcome, "moved_to": versions[1]}


if __name__ == "__main__":
    main()
