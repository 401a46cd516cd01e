"""Benchmark: BLEU + chrF + ROUGE-1/2/L (overall and per language) for 10,000 reply pairs.

    make bench            # or: python benchmarks/bench_metrics.py --pairs 10000

Pairs are real corpus replies (en + zh), each scored against another reply of the same language, so lengths and
scripts are realistic. Target (issue 5): <= 10 s on the 2-core CPU. Writes bench-results/metrics.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from pipeline import ingest
from pipeline.evaluation import metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--output", default="bench-results/metrics.json")
    args = parser.parse_args()

    turns, _, _ = ingest.collect(ingest.IngestConfig(), "2026-11-22")
    replies = turns[turns["role"] == "assistant"][["text", "language"]].itertuples(index=False)
    by_language: dict[str, list[str]] = {}
    for text, language in replies:
        by_language.setdefault(language, []).append(text)
    rng = random.Random(0)
    pool = [(text, language) for language, texts in by_language.items() for text in texts]
    chosen = [rng.choice(pool) for _ in range(args.pairs)]
    hypotheses = [rng.choice(by_language[language]) for _, language in chosen]
    references = [text for text, _ in chosen]
    languages = [language for _, language in chosen]

    start = time.perf_counter()
    scores = metrics.score(hypotheses, references, languages)
    seconds = time.perf_counter() - start
    result = {"benchmark": "metrics", "pairs": args.pairs, "seconds": round(seconds, 2), "target": "<= 10 s",
              "pairs_per_language": {k: languages.count(k) for k in sorted(set(languages))},
              "scores": {k: round(v, 3) for k, v in scores.items()}}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
