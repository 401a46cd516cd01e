"""Benchmark: training throughput in real (non-pad) tokens/s, our batching vs the tutorial baseline, one run.

    make bench            # or: python benchmarks/bench_training.py --steps 8 --conversations-per-step 8

Model: the real SmolLM2-135M-Instruct, full fine-tune, fp32 (bf16 where the hardware has it, as in train).
Data: the real corpus's train split (en + zh), chat-templated, max_seq_length 256. Every variant trains on about the
same number of conversations per optimizer step, so they train the same way and differ only in how they batch:
  baseline  transformers Trainer + DataCollatorForSeq2Seq(padding="max_length"): every sample padded to 256 tokens,
            random order (what most tutorials do)
  grouped   pipeline.train: length-grouped batches, padded to the longest sample of each batch
  packed    pipeline.train: conversations packed into rows of 256 tokens, no cross-attention (the default)
Each variant runs in its own process (so peak memory is its own): warm-up steps, then timed steps.
Targets (issue 4): packed >= 2.5x the baseline's real tokens/s; padding waste < 10%. Writes bench-results/training.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("baseline", "grouped", "packed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per variant")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--conversations-per-step", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant in this process (used internally)")
    parser.add_argument("--output", default="bench-results/training.json")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results = {}
    for variant in VARIANTS:
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", variant],
                               capture_output=True, text=True, check=False)
        if child.returncode != 0:
            sys.exit(f"{variant} failed:\n{child.stderr[-3000:]}")
        results[variant] = json.loads(child.stdout.strip().splitlines()[-1])
        print(variant, results[variant], flush=True)
    base = results["baseline"]["real_tokens_per_second"]
    summary = {
        "benchmark": "training", "model": "SmolLM2-135M-Instruct (full fine-tune)", "cpu": cpu_name(),
        "steps_timed": args.steps, "conversations_per_step": args.conversations_per_step,
        "max_seq_length": args.max_seq_length,
        "speedup_packed_vs_baseline": round(results["packed"]["real_tokens_per_second"] / base, 2),
        "speedup_grouped_vs_baseline": round(results["grouped"]["real_tokens_per_second"] / base, 2),
        "target": "packed >= 2.5x baseline real tokens/s; padding waste < 10%",
        **results,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in VARIANTS}, indent=2))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run_variant(args) -> dict:
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from pipeline import batching, ingest, models, train
    from pipeline.config import ProjectConfig

    turns, _, _ = ingest.collect(ingest.IngestConfig(), "2026-11-22")  # the embedded data: chatterbot en + zh
    reference = ProjectConfig().base_model
    tokenizer = models.load_tokenizer(reference)
    packed = args.variant == "packed"
    rows_per_step = args.conversations_per_step
    config = train.TrainConfig(max_steps=args.warmup_steps + args.steps, max_seq_length=args.max_seq_length,
                               packing=packed, batch_size=rows_per_step, system_prompt="You are a helpful chatbot.",
                               logging_steps=10_000, warmup_steps=0, learning_rate=1e-5)
    train_set, stats = train.build_dataset(turns, "train", tokenizer, config)
    if packed:  # same conversations per step: a packed row holds several
        per_row = stats["data/train_conversations"] / stats["data/train_rows"]
        rows_per_step = max(1, round(args.conversations_per_step / per_row))
        config = train.TrainConfig(**{**config.__dict__, "batch_size": rows_per_step})
    model = models.load_model(reference)
    model.config.use_cache = False
    output = Path(tempfile.mkdtemp(prefix=f"bench-{args.variant}-"))  # the Trainer's output_dir; nothing is saved
    if args.variant == "baseline":
        stock = DataCollatorForSeq2Seq(tokenizer, padding="max_length", max_length=args.max_seq_length)
        counter = batching.Collator(tokenizer.pad_token_id)  # only its counters are used

        def collate(features):
            batch = stock([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
            counter.real_tokens += int(batch["attention_mask"].sum())
            counter.positions += batch["attention_mask"].numel()
            return batch

        trainer = Trainer(model=model, train_dataset=train_set, data_collator=collate, args=TrainingArguments(
            output_dir=str(output), max_steps=config.max_steps, per_device_train_batch_size=rows_per_step,
            # use_cpu as in train.make_trainer: without it transformers refuses bf16 on a CPU ("doesn't support bf16/gpu")
            use_cpu=not torch.cuda.is_available(),
            learning_rate=config.learning_rate, bf16=train._bf16_supported(), report_to="none", save_strategy="no",
            disable_tqdm=True, logging_steps=10_000, remove_unused_columns=False, seed=42))
        collator = counter
    else:
        trainer, collator = train.make_trainer(model, tokenizer, train_set, None, config, output)
        trainer.remove_callback(train.StepMetrics)

    class Clock(TrainerCallback):
        marks: list = []

        def on_step_end(self, a, state, control, **kwargs):
            self.marks.append((time.perf_counter(), collator.real_tokens, collator.positions))

    trainer.add_callback(Clock())
    trainer.train()
    (t0, real0, pos0), (t1, real1, pos1) = Clock.marks[args.warmup_steps - 1], Clock.marks[-1]
    seconds = t1 - t0
    return {
        "batch": f"{rows_per_step} {'packed rows' if packed else 'conversations'} x <= {args.max_seq_length} tokens",
        "seconds": round(seconds, 2), "seconds_per_step": round(seconds / args.steps, 2),
        "real_tokens": real1 - real0, "positions": pos1 - pos0,
        "real_tokens_per_second": round((real1 - real0) / seconds, 1),
        "padding_waste": round(1 - (real1 - real0) / (pos1 - pos0), 4),
        "precision": "bf16" if trainer.args.bf16 else "fp32", "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


if __name__ == "__main__":
    main()
