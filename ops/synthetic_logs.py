"""Synthetic chat logs at scale, for the benchmarks and load tests: OpenAI-format JSONL with the faults of real logs.

    python -m ops.synthetic_logs --utterances 1000000 --out /tmp/logs        # 8 JSONL files, as one date partition

Four-turn conversations, 20% Chinese, 3% exact and 2% near-exact (re-cased) duplicates, ~1% of turns carrying an
e-mail / phone / card number, 0.1% malformed lines; seeded, so the same call writes the same bytes.
`turns_table` turns them into a train-split turns table like ingest's (benchmarks/bench_tokenization.py).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WORDS = ("the model answers every question about weather travel food music code books games health money time "
         "work school family sport city river mountain").split()
HANZI = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自可"


def sentence(rng: random.Random, chinese: bool) -> str:
    if chinese:
        return "".join(rng.choice(HANZI) for _ in range(rng.randint(6, 30))) + "。"
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25))).capitalize() + "."


def generate(root: Path, utterances: int, files: int = 8) -> dict:
    rng = random.Random(0)
    conversations = utterances // 4
    handles = [open(root / f"part-{i:02d}.jsonl", "w", encoding="utf-8") for i in range(files)]
    made, kinds = [], {"exact_dup": 0, "near_dup": 0, "pii": 0, "malformed": 0}
    for number in range(conversations):
        handle = handles[number % files]
        roll = rng.random()
        if made and roll < 0.03:
            messages = rng.choice(made)
            kinds["exact_dup"] += 1
        elif made and roll < 0.05:
            messages = [{**m, "content": m["content"].upper() + "!"} for m in rng.choice(made)]
            kinds["near_dup"] += 1
        else:
            chinese = rng.random() < 0.2
            messages = [{"role": "user" if t % 2 == 0 else "assistant", "content": sentence(rng, chinese)}
                        for t in range(4)]
            if rng.random() < 0.04:  # ~1% of turns
                messages[0]["content"] += rng.choice([f" mail me at user{number}@example.com",
                                                      f" call +1 (555) 123-{number % 10000:04d}",
                                                      " card 4111 1111 1111 1111"])
                kinds["pii"] += 1
            if len(made) < 5000:
                made.append(messages)
        if rng.random() < 0.001:
            handle.write('{"messages": [{"role": "user", "content": "cut off\n')
            kinds["malformed"] += 1
        handle.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    for handle in handles:
        handle.close()
    return {"conversations": conversations, "utterances": conversations * 4, **kinds}


def turns_table(conversations: int, scratch: Path) -> Path:
    """generate()'s conversations (its malformed lines skipped) as a train-split turns table, as ingest writes it."""
    generated = scratch / "generated"
    generated.mkdir()
    generate(generated, utterances=4 * conversations)
    columns = {"conversation_id": [], "turn_index": [], "role": [], "text": [], "language": []}
    for path in sorted(generated.glob("*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    messages = json.loads(line)["messages"]
                except json.JSONDecodeError:
                    continue  # the generator's deliberately malformed lines
                cid = f"{path.stem}-{len(columns['conversation_id']):09d}"
                language = "zh" if messages[0]["content"][:1] in HANZI else "en"
                for index, message in enumerate(messages):
                    columns["conversation_id"].append(cid)
                    columns["turn_index"].append(index)
                    columns["role"].append(message["role"])
                    columns["text"].append(message["content"])
                    columns["language"].append(language)
        path.unlink()
    table = pa.table(columns)
    table = table.append_column("split", pa.array(["train"] * len(table), pa.string()))
    pq.write_table(table, scratch / "turns.parquet")
    return scratch / "turns.parquet"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.synthetic_logs", description=__doc__.split("\n")[0])
    parser.add_argument("--utterances", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(generate(args.out, args.utterances, args.files)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
