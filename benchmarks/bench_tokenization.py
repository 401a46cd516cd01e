"""Benchmark: tokenize and pack 1,000,000 synthetic multi-turn conversations for training, on this machine.

    python benchmarks/bench_tokenization.py                          # or: --conversations 20000

The conversations come from ops/synthetic_logs.py (four turns each, 20% Chinese, its duplicates included),
written as a turns table like the one ingest writes (not timed). A fresh process then does what train's
build_dataset does: reads the table, tokenizes it with pipeline/training/samples/tokenization.py and the real SmolLM2 tokenizer
(from the chat template's layout: each message's segment tokenized without offsets, on the tokenizer's Rust
threads) and packs the samples into rows of `--max-seq-length` tokens. Its wall time, conversations/s, tokens/s,
CPU seconds and peak memory (PSS and RSS, sampled every 0.1 s) are measured. `--turns` reuses a table written before.
The measured process allocates as the stage does (pipeline/process/allocator.py: tcmalloc where installed; the JSON says
which); CHAT_RETRAIN_ALLOCATOR=system measures glibc's malloc instead.
Target (issue 15, item 4): <= 60 s and <= 4 GiB on 2 cores. Writes bench-results/tokenization.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from ops import synthetic_logs


def measure(turns_path: str, max_seq_length: int) -> dict:
    """Runs in the measured process: what build_dataset does for one split, timed step by step."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # as the stage sets it: tokenize_split turns the threads on itself
    import pandas as pd

    from pipeline.config import ProjectConfig
    from pipeline.model import loading
    from pipeline.training.samples import tokenization

    tokenizer = loading.load_tokenizer(ProjectConfig().base_model)
    cpu_before = _cpu_seconds()
    began = time.perf_counter()
    turns = pd.read_parquet(turns_path)
    read = time.perf_counter()
    tokenized = tokenization.tokenize_split(turns, "train", tokenizer, max_seq_length)
    tokenized_at = time.perf_counter()
    dataset = tokenization.to_dataset(tokenized, max_seq_length, consume=True)  # as train's build_dataset
    packed = time.perf_counter()
    conversations = len(tokenized.conversation_ids) + len(tokenized.replyless)
    seconds = packed - read
    return {
        "conversations": conversations, "replyless": len(tokenized.replyless),
        "rendered": tokenized.rendered, "tokens": tokenized.tokens,
        "rows": len(dataset), "row_fill": round(tokenized.tokens / (len(dataset) * max_seq_length), 3),
        "seconds": {"read_table": round(read - began, 1), "tokenize": round(tokenized_at - read, 1),
                    "pack": round(packed - tokenized_at, 1), "tokenize_and_pack": round(seconds, 1)},
        "conversations_per_s": round(conversations / seconds), "tokens_per_s": round(tokenized.tokens / seconds),
        # CPU of this process and its threads: on a busy machine wall time is not the code's; cpu / cores is a floor
        "cpu_seconds": round(_cpu_seconds() - cpu_before, 1),
    }


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_measured(turns_path: Path, max_seq_length: int) -> tuple[dict, dict]:
    """The measurement in its own process (so generating the data does not count), and its peak memory in GiB:
    PSS and RSS, each summed over the process and any children, sampled every 0.1 s."""
    command = [sys.executable, __file__, "--measure", str(turns_path), "--max-seq-length", str(max_seq_length)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peak, done = {"pss": 0, "rss": 0}, threading.Event()

    def sample():
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                memory = [p.memory_full_info() for p in [root, *root.children(recursive=True)]]
                for kind in peak:
                    peak[kind] = max(peak[kind], sum(getattr(m, kind) for m in memory))
            except psutil.NoSuchProcess:  # a worker ended between listing and reading
                pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"the measured process failed (exit {process.returncode})")
    return json.loads(stdout.strip().splitlines()[-1]), {kind: round(value / 2**30, 2) for kind, value in peak.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=1_000_000)
    parser.add_argument("--max-seq-length", type=int, default=256, help="train.max_seq_length: truncation and rows")
    parser.add_argument("--turns", help="a turns table written by an earlier run (kept with --keep-turns)")
    parser.add_argument("--keep-turns", help="copy the generated turns table here")
    parser.add_argument("--output", default="bench-results/tokenization.json")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: run the measured part on this table
    args = parser.parse_args()
    if args.measure:
        from pipeline.process import allocator

        allocator.use_tcmalloc()  # as `python -m pipeline train` does
        print(json.dumps({**measure(args.measure, args.max_seq_length), "allocator": allocator.active()}))
        return

    with tempfile.TemporaryDirectory(prefix="bench-tokenization-") as scratch:
        started = time.perf_counter()
        turns_path = Path(args.turns) if args.turns else synthetic_logs.turns_table(args.conversations, Path(scratch))
        if args.keep_turns:
            shutil.copyfile(turns_path, args.keep_turns)
        generate_s = time.perf_counter() - started
        measured, peak = run_measured(turns_path, args.max_seq_length)
    result = {
        "benchmark": "tokenization", "requested_conversations": args.conversations, **measured,
        "peak_pss_gib": peak["pss"], "peak_rss_gib": peak["rss"],
        "target": "<= 60 s tokenize_and_pack, <= 4 GiB peak (PSS), 2 cores",
        "generate_s_not_timed": round(generate_s, 1), "max_seq_length": args.max_seq_length,
        "cpu": os.cpu_count(),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
