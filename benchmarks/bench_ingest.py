"""Benchmark: ingest + clean + validate 1,000,000 utterances (synthetic, OpenAI-format JSONL) on this machine.

    make bench            # or: python benchmarks/bench_ingest.py --utterances 1000000

The data is generated first (not timed, ops/synthetic_logs.py): 250,000 four-turn conversations in 8 JSONL files of one date partition,
20% Chinese, with 3% exact and 2% near-exact duplicates, 1% of turns carrying an e-mail / phone / card number and
0.1% malformed lines. Then the real stage commands run as the DAG runs them (`python -m pipeline ingest`, then
`validate`, each its own process, MLflow on SQLite); wall time and peak RSS of each process are measured.
Target (issue 3): <= 60 s and <= 4 GiB peak memory. Writes bench-results/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ops import synthetic_logs


def run_stage(stage: str, config: Path, *extra: str) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GiB) and stdout of one stage process."""
    command = [sys.executable, "-m", "pipeline", stage, "--config", str(config), "--run-date", "2026-11-22",
               "--run-id", "bench", *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    stdout, stderr = process.stdout.read(), process.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{stage} failed:\n{stderr[-3000:]}")
    return seconds, usage.ru_maxrss / 2**20, stdout  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--utterances", type=int, default=1_000_000)
    parser.add_argument("--output", default="bench-results/ingest.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as scratch:
        root = Path(scratch)
        partition = root / "incoming" / "dt=2026-11-22"
        partition.mkdir(parents=True)
        generated = synthetic_logs.generate(partition, args.utterances)
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump({
            "project": {"data_root": str(root / "data"), "runs_root": str(root / "runs"),
                        "tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "artifact_root": str(root / "artifacts")},
            "ingest": {"sources": [{"format": "openai", "uri": str(root / "incoming"), "partitioned": True}]},
            "validate": {"min_conversations": {"train": generated["conversations"] // 2,
                                               "validation": generated["conversations"] // 20,
                                               "test": generated["conversations"] // 20},
                         "max_pii_ratio": 0.02},
        }))
        ingest_s, ingest_gib, stdout = run_stage("ingest", config)
        dataset = stdout.strip().splitlines()[-1]
        validate_s, validate_gib, _ = run_stage("validate", config, "--dataset", dataset)
        manifest = json.loads((Path(dataset) / "manifest.json").read_text())
        validation = json.loads((root / "runs" / "manual" / "bench" / "validate" / "validation.json").read_text())

    result = {
        "benchmark": "ingest", "utterances": args.utterances, "generated": generated,
        "seconds": {"ingest": round(ingest_s, 1), "validate": round(validate_s, 1),
                    "total": round(ingest_s + validate_s, 1)},
        "peak_rss_gib": {"ingest": round(ingest_gib, 2), "validate": round(validate_gib, 2)},
        "target": "<= 60 s total, <= 4 GiB peak", "counts": manifest["counts"],
        "rows": manifest["rows"], "quarantined": manifest["quarantined"],
        "expectations": validation["evaluated"], "failed": validation["critical"] + validation["warnings"],
        "cpu": os.cpu_count(),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
