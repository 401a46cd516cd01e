"""Benchmark: the promotion gate's paired bootstrap, 1,000 resamples over 10,000 reply pairs, every gated metric.

    make bench            # or: python benchmarks/bench_bootstrap.py --pairs 10000 --resamples 1000

Two models (candidate, incumbent) reply to the same 10,000 real corpus prompts (en + zh; each reply is another
corpus reply of the same language). Timed separately: the per-example statistics (n-gram counts, per-reply ROUGE;
done once per night) and the resampling + comparison of the metrics the embedded config gates on (bleu; guards
rougeL, chrf1 and their en / zh variants). Target (issue 12): <= 10 s for the resampling and comparisons on the
2-core CPU. Writes bench-results/bootstrap.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import pandas as pd

from pipeline import ingest
from pipeline.promotion import significance

GATED = ["bleu", "rougeL", "chrf1", "rougeL_en", "rougeL_zh", "chrf1_en", "chrf1_zh"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--output", default="bench-results/bootstrap.json")
    args = parser.parse_args()

    turns, _, _ = ingest.collect(ingest.IngestConfig(), "2026-11-22")
    by_language: dict[str, list[str]] = {}
    for text, language in turns[turns["role"] == "assistant"][["text", "language"]].itertuples(index=False):
        by_language.setdefault(language, []).append(text)
    rng = random.Random(0)
    pool = [(text, language) for language, texts in by_language.items() for text in texts]
    chosen = [rng.choice(pool) for _ in range(args.pairs)]
    table = pd.DataFrame({
        "language": [language for _, language in chosen], "reference": [text for text, _ in chosen],
        "candidate": [rng.choice(by_language[language]) for _, language in chosen],
        "incumbent": [rng.choice(by_language[language]) for _, language in chosen],
    })

    start = time.perf_counter()
    samples = significance.PairedSamples(table, ["candidate", "incumbent"], "bench")
    statistics_seconds = time.perf_counter() - start
    start = time.perf_counter()
    weights = significance.resample_weights(samples.groups, args.resamples, seed=12345)
    comparisons = [significance.compare(samples, key, "candidate", "incumbent", threshold=0.0, lower_is_better=False,
                                        rule="improves", confidence=0.95, weights=weights) for key in GATED]
    bootstrap_seconds = time.perf_counter() - start
    result = {"benchmark": "bootstrap", "pairs": args.pairs, "resamples": args.resamples, "metrics": GATED,
              "seconds": round(bootstrap_seconds, 2), "target": "<= 10 s",
              "statistics_seconds": round(statistics_seconds, 2),
              "comparisons": {c.metric: {"gain": round(c.gain, 3), "low": round(c.low, 3), "high": round(c.high, 3),
                                         "p_value": round(c.p_value, 4)} for c in comparisons}}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
