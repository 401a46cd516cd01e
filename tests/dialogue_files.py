"""Dialogue files in the formats ingest reads (OpenAI messages, ShareGPT conversations), written as JSONL, Parquet
or a saved Hugging Face dataset, for tests and the ingest benchmark."""

from __future__ import annotations

import json
from pathlib import Path


def openai_record(number: int, turns: int = 2, language: str = "en") -> dict:
    messages = []
    for index in range(turns):
        role = "user" if index % 2 == 0 else "assistant"
        text = f"问题 {number} 第 {index} 句。" if language == "zh" else f"This is message {index} of the dialogue number {number}."
        messages.append({"role": role, "content": text})
    return {"messages": messages}


def sharegpt_record(number: int) -> dict:
    return {"conversations": [{"from": "human", "value": f"How do I do task {number}?"},
                              {"from": "gpt", "value": f"Here is how to do task {number}."}]}


def write_jsonl(path: Path, records: list, raw_lines: list[bytes] = ()) -> Path:
    """Records as JSON lines, then raw_lines (bytes) as they are: for malformed input."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)
    path.write_bytes(body + b"".join(line + b"\n" for line in raw_lines))
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def write_hf_dataset(path: Path, records: list[dict]) -> Path:
    import datasets

    datasets.Dataset.from_list(records).save_to_disk(str(path))
    return path
