"""JSON files of chat records as (origin, record) pairs: JSON Lines (one record per line) and JSON documents (a
ShareGPT or OpenAI export written as one array, or one record). Not a command; `sources` reads through it.

A `.jsonl` file is JSON Lines. A `.json` file is first parsed whole: an array yields its elements (origin
`a.json[17]`, counted from 0), an object is one record; a `.json` file that is not one JSON document is read as
JSON Lines, since exporters name JSON Lines `.json` too. Bad bytes and bad JSON become rejections naming the line
(or the document's line and column), never a crash; `reject(origin, reason, excerpt)` builds them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

UTF8_BOM = b"\xef\xbb\xbf"  # an editor's habit, not an error


def rows(path: Path, name: str, reject: Callable) -> Iterator[tuple[str, object]]:
    """(origin, parsed record or rejection) for a .json or .jsonl file."""
    if path.suffix == ".json":
        document = _document(path, name, reject)
        if document is not None:
            yield from document
            return
    yield from lines(path, name, reject)


def _document(path: Path, name: str, reject: Callable) -> list | None:
    """The file as one JSON document, or None when it is not one (then it is JSON Lines)."""
    data = path.read_bytes().removeprefix(UTF8_BOM)
    try:
        parsed = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return [(name, reject(name, f"not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}",
                              data[:300].decode("utf-8", "replace")))]
    except json.JSONDecodeError:
        return None
    if isinstance(parsed, list):
        return [(f"{name}[{index}]", record) for index, record in enumerate(parsed)]
    return [(name, parsed)]


def lines(path: Path, name: str, reject: Callable) -> Iterator[tuple[str, object]]:
    """(origin, parsed record or rejection) per non-blank line; bad bytes and bad JSON are rejected per line."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            origin = f"{name}:{number}"
            if number == 1:
                line = line.removeprefix(UTF8_BOM)
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield origin, reject(origin, f"not UTF-8: byte 0x{line[exc.start]:02x} at column {exc.start + 1}",
                                     line[:300].decode("utf-8", "replace"))
                continue
            if not text.strip():
                continue
            try:
                yield origin, json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                yield origin, reject(origin, f"malformed JSON: {exc.msg} (column {exc.colno})", text[:300])
