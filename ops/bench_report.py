"""The benchmark table of docs/benchmarks.md, generated from the JSON files `make bench` writes to bench-results/.

    python -m ops.bench_report                              # print the table
    python -m ops.bench_report --page docs/benchmarks.md    # replace the table between the bench-table markers

One row per result file found; a benchmark that has not run is left out rather than shown with old numbers.
Each row says what was measured, the result, the target and whether it was met, so the table is never edited by hand.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
from pathlib import Path

START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def metrics(r):
    return ("BLEU + chrF + ROUGE-1/2/L, overall + per language", f"{r['pairs']:,} pairs in {r['seconds']} s",
            r["target"], r["seconds"] <= 10)


def bootstrap(r):
    return (f"promotion gate's paired bootstrap: {r['resamples']:,} resamples x {r['pairs']:,} pairs, "
            f"{len(r['metrics'])} metrics", f"{r['seconds']} s (+ {r['statistics_seconds']} s per-example statistics)",
            r["target"], r["seconds"] <= 10)


def generation(r):
    return (f"greedy generation, {r['prompts']} prompts, {r['max_new_tokens']} new tokens, batch {r['batch_size']} "
            "vs one at a time", f"{r['speedup']}x, {r['identical_replies']} replies identical", r["target"],
            r["speedup"] >= 6 and r["identical_replies"].split("/")[0] == r["identical_replies"].split("/")[1])


def ingest(r):
    peak = max(r["peak_rss_gib"].values())
    return (f"ingest + validate {r['utterances']:,} synthetic utterances (the two stage commands)",
            f"{r['seconds']['total']} s (ingest {r['seconds']['ingest']} s, validate {r['seconds']['validate']} s); "
            f"peak RSS {peak} GiB", r["target"], r["seconds"]["total"] <= 60 and peak <= 4)


def tokenization(r):
    seconds = r["seconds"]["tokenize_and_pack"]
    return (f"tokenize + pack {r['conversations']:,} synthetic multi-turn conversations (ops/synthetic_logs.py), "
            f"SmolLM2 tokenizer, {_tokenized_by(r)}, rows of {r['max_seq_length']}",
            f"{seconds} s ({r['conversations_per_s']:,} conversations/s, {r['tokens_per_s']:,} tokens/s); "
            f"peak PSS {r['peak_pss_gib']} GiB", r["target"], seconds <= 60 and r["peak_pss_gib"] <= 4)


def _tokenized_by(r) -> str:
    if "workers" in r:  # files written before the layout path
        return f"{r['workers']} worker processes"
    allocator = f", {r['allocator']} allocator" if "allocator" in r else ""
    return f"one process, Rust threads, {r['rendered']:,} conversations rendered{allocator}"


def generic(r):
    """A result file that states its own row (row: {what, result, target, met})."""
    row = r["row"]
    return row["what"], row["result"], row["target"], row["met"]


FORMATTERS = {"metrics": metrics, "bootstrap": bootstrap, "generation": generation, "ingest": ingest,
              "tokenization": tokenization}


def rows(results: Path) -> list[tuple[str, str, str, bool]]:
    found = []
    for path in sorted(results.glob("*.json")):
        result = json.loads(path.read_text())
        formatter = generic if "row" in result else FORMATTERS.get(result.get("benchmark"))
        if formatter is not None:
            found.append((*formatter(result), path.name))
    return found


def table(results: Path) -> str:
    cpu = _cpu()
    lines = [f"Measured by `make bench` on {cpu}; generated from `bench-results/*.json` by `ops/bench_report.py`.",
             "", "| benchmark | result | target | met | file |", "|---|---|---|---|---|"]
    lines += [f"| {what} | {result} | {target} | {'yes' if met else '**no**'} | `{name}` |"
              for what, result, target, met, name in rows(results)]
    return "\n".join(lines)


def _cpu() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = re.search(r"model name\s*:\s*(.+)", info)
    flags = "AVX512-bf16: bf16 autocast" if "avx512_bf16" in info else "no AVX512-bf16: fp32"
    return f"{model.group(1).strip() if model else platform.machine()} ({flags})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench_report", description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="bench-results")
    parser.add_argument("--page", help="replace the table between the bench-table markers in this file")
    args = parser.parse_args(argv)
    text = table(Path(args.results))
    if not args.page:
        print(text)
        return 0
    page = Path(args.page).read_text()
    if START not in page or END not in page:
        raise SystemExit(f"{args.page}: no {START} ... {END} markers to put the table between")
    before, rest = page.split(START, 1)
    Path(args.page).write_text(f"{before}{START}\n{text}\n{END}{rest.split(END, 1)[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
