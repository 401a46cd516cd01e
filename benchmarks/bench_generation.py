"""Benchmark: batched greedy generation vs one prompt at a time, same model, same prompts, one run.

    make bench            # or: python benchmarks/bench_generation.py --prompts 64 --batch-size 32

Model: the real SmolLM2-135M-Instruct (fp32). Prompts: held-out test dialogues of the real corpus (en + zh).
Reports wall time, generated tokens per second, the speedup, and whether every reply is identical.
Target (issue 5): >= 6x on the 2-core CPU, identical outputs. Writes bench-results/generation.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from pipeline import ingest
from pipeline.config import ProjectConfig
from pipeline.model import chat_format, generation, loading


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--output", default="bench-results/generation.json")
    args = parser.parse_args()

    turns, _, _ = ingest.collect(ingest.IngestConfig(), "2026-11-22")  # the embedded data: chatterbot en + zh
    histories = [e.history for e in chat_format.eval_examples(turns, "test")][: args.prompts]
    reference = ProjectConfig().base_model
    tokenizer, model = loading.load_tokenizer(reference), loading.load_model(reference)
    generation.generate_replies(model, tokenizer, histories[:2], max_new_tokens=4, batch_size=2)  # warm-up

    runs = {}
    for name, batch_size in (("one_at_a_time", 1), ("batched", args.batch_size)):
        start = time.perf_counter()
        replies = generation.generate_replies(model, tokenizer, histories, max_new_tokens=args.max_new_tokens,
                                              batch_size=batch_size)
        seconds = time.perf_counter() - start
        tokens = sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies)
        runs[name] = {"seconds": round(seconds, 2), "reply_tokens": tokens,
                      "reply_tokens_per_second": round(tokens / seconds, 1), "replies": replies}
    identical = sum(a == b for a, b in zip(runs["batched"]["replies"], runs["one_at_a_time"]["replies"], strict=True))
    result = {
        "benchmark": "generation", "model": reference, "dtype": "float32", "prompts": len(histories),
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "speedup": round(runs["one_at_a_time"]["seconds"] / runs["batched"]["seconds"], 2),
        "identical_replies": f"{identical}/{len(histories)}", "target": ">= 6x, identical",
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        **{name: {k: v for k, v in r.items() if k != "replies"} for name, r in runs.items()},
        "sample_replies": runs["batched"]["replies"][:5],
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "sample_replies"}, indent=2))


if __name__ == "__main__":
    main()
