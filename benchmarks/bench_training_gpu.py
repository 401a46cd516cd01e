"""Benchmark on a GPU: training throughput (real tokens/s) and MFU, packed vs padded-to-max, bf16 autocast.

    python benchmarks/bench_training_gpu.py --prepare .gpu-bench      # here: tokenize the corpus, write the config
    python benchmarks/bench_training_gpu.py --run .gpu-bench          # on the GPU machine (torch + transformers only)

The model is SmolLM2-135M's exact architecture (config read from the GGUF file), randomly initialised: the GPU
machine cannot receive the 93 MB GGUF, and throughput does not depend on weight values. Data: the real corpus's
train split, chat-templated with SmolLM2's tokenizer, max_seq_length 256, assistant-only labels — the same samples
as benchmarks/bench_training.py. Both variants run the same plain training loop (AdamW, fp32 master weights, bf16
autocast) on the same conversations per step and differ only in batching:
  baseline  every sample padded to max_seq_length (what most tutorials do)
  packed    pipeline.training.samples.batching: best-fit packing into rows of max_seq_length, position ids restart, no
            cross-attention
MFU = model FLOPs per real token x real tokens/s / peak bf16 dense FLOP/s (H100 SXM: 989e12). FLOPs per token:
6 x parameters (the tied LM head counted once, as a matmul) + 12 x layers x hidden x max_seq_length (attention,
PaLM's approximation, unmasked upper bound). Writes <dir>/training_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def prepare(directory: Path, max_seq_length: int) -> None:
    from pipeline import ingest
    from pipeline.config import ProjectConfig
    from pipeline.model import chat_format, loading

    directory.mkdir(parents=True, exist_ok=True)
    reference = ProjectConfig().base_model
    tokenizer = loading.load_tokenizer(reference)
    turns, _, _ = ingest.collect(ingest.IngestConfig(), "2026-11-22")
    features = [chat_format.tokenize_conversation(tokenizer, messages, max_seq_length, "You are a helpful chatbot.")
                for _, _, messages in chat_format.conversations(turns, "train")]
    features = [f for f in features if f is not None]
    (directory / "features.json").write_text(json.dumps(features))
    config = loading.load_model(reference).config.to_dict()
    config.pop("quantization_config", None)
    (directory / "config.json").write_text(json.dumps(config))
    print(f"{len(features)} samples, pad id {tokenizer.pad_token_id}", file=sys.stderr)
    (directory / "meta.json").write_text(json.dumps({"pad_token_id": tokenizer.pad_token_id}))


def run(directory: Path, args) -> dict:
    import random

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.model import chat_format
    from pipeline.training import throughput
    from pipeline.training.samples import batching

    features = [{**f, "conversation_ids": [str(i)]}
                for i, f in enumerate(json.loads((directory / "features.json").read_text()))]
    pad = json.loads((directory / "meta.json").read_text())["pad_token_id"]
    config = LlamaConfig.from_dict({k: v for k, v in json.loads((directory / "config.json").read_text()).items()
                                    if k not in ("architectures", "transformers_version")})
    config.use_cache = False
    cuda = torch.cuda.is_available()  # CPU only to smoke-test this script; the figures are from a GPU
    device = torch.device("cuda" if cuda else "cpu")
    name = throughput.device_name()
    peak = throughput.peak_flops(name)
    results = {"device": name, "torch": torch.__version__, "max_seq_length": args.max_seq_length,
               "conversations_per_step": args.conversations_per_step}
    for variant in args.variants:
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(device)
        params = sum(p.numel() for p in model.parameters())
        flops_per_token = throughput.training_flops_per_token(model, args.max_seq_length)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
        rng = random.Random(0)
        order = list(range(len(features)))
        rng.shuffle(order)
        step_samples = [[features[order[(s * args.conversations_per_step + i) % len(order)]]
                         for i in range(args.conversations_per_step)]
                        for s in range(args.warmup_steps + args.steps)]
        if variant == "packed":
            collate = batching.Collator(pad, packed=True)
            batches = [collate(batching.pack(samples, args.max_seq_length)) for samples in step_samples]
        else:
            batches = [chat_format.pad_batch([{**f, "input_ids": f["input_ids"] + [pad] * (args.max_seq_length - len(
                f["input_ids"])), "labels": f["labels"] + [chat_format.IGNORE_INDEX] * (args.max_seq_length - len(
                    f["labels"]))} for f in samples], pad) for samples in step_samples]
            for batch, samples in zip(batches, step_samples, strict=True):  # padding is not attended
                for row, f in enumerate(samples):
                    batch["attention_mask"][row, len(f["input_ids"]):] = 0
        real = [sum(len(f["input_ids"]) for f in samples) for samples in step_samples]
        positions = [int(b["input_ids"].numel()) for b in batches]
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for step, batch in enumerate(batches):
            if step == args.warmup_steps:
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        tokens = sum(real[args.warmup_steps:])
        rate = tokens / seconds
        results[variant] = {
            "real_tokens_per_second": round(rate), "seconds": round(seconds, 2), "steps": args.steps,
            "padding_waste": round(1 - sum(real) / sum(positions), 4),
            "rows_per_step": int(batches[0]["input_ids"].shape[0]), "final_loss": round(loss.item(), 3),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "mfu": round(throughput.mfu(rate, flops_per_token, peak, 1), 4) if peak else None,
            "model_tflops_per_second": round(flops_per_token * rate / 1e12, 1),
        }
        results["parameters"] = params
        print(variant, results[variant], file=sys.stderr, flush=True)
        del model, optimizer
        if cuda:
            torch.cuda.empty_cache()
    if {"baseline", "packed"} <= set(results):
        results["speedup_packed_vs_baseline"] = round(
            results["packed"]["real_tokens_per_second"] / results["baseline"]["real_tokens_per_second"], 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepare", type=Path)
    parser.add_argument("--run", type=Path)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--conversations-per-step", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--variants", nargs="+", default=["baseline", "packed"], choices=["baseline", "packed"],
                        help="packed alone for batches the padded baseline cannot fit (its logits alone: "
                             "positions x 49,152 x 4 bytes)")
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare, args.max_seq_length)
        return
    results = run(args.run, args)
    output = args.output or args.run / "training_gpu.json"
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
