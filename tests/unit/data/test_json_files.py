"""JSON documents and JSON Lines: a ShareGPT export written as one array is read record by record, not
quarantined line by line; a .json file of JSON Lines still reads; bad input is rejected by origin."""

import json

from pipeline.data import sources

SHAREGPT = [{"conversations": [{"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": f"answer {i}"}]}
            for i in range(40)]


def _read(path, fmt="sharegpt"):
    source = sources.SourceConfig(format=fmt, uri=str(path), language="en")
    return list(sources.read(source, "2026-11-22", 1, []))


def test_a_sharegpt_export_written_as_one_indented_json_array_gives_every_conversation(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(SHAREGPT, indent=2))  # 482 lines: read as JSON Lines, every line was "malformed"
    items = _read(path)
    assert len(items) == 40 and not [i for i in items if isinstance(i, sources.Rejected)]
    assert items[17].messages == [("user", "question 17"), ("assistant", "answer 17")]
    assert items[17].origin == f"{path}[17]"


def test_a_bad_element_of_an_array_is_rejected_by_its_index_and_the_rest_is_read(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps([SHAREGPT[0], {"conversations": "not a list"}, SHAREGPT[1]]))
    items = _read(path)
    (rejected,) = [i for i in items if isinstance(i, sources.Rejected)]
    assert rejected.origin == f"{path}[1]" and len(items) == 3


def test_json_lines_named_json_and_a_broken_document_are_read_as_json_lines(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text("\n".join(json.dumps(r) for r in SHAREGPT[:3]) + "\n{broken\n")
    items = _read(path)
    assert [type(i).__name__ for i in items] == ["Conversation"] * 3 + ["Rejected"]
    assert items[3].origin == f"{path}:4" and items[3].reason.startswith("malformed JSON")


def test_a_json_document_that_is_not_utf8_is_rejected_naming_the_byte(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(json.dumps(SHAREGPT[:1]).encode().replace(b"question", b"qu\xe9stion"))
    (item,) = _read(path)
    assert isinstance(item, sources.Rejected) and item.reason.startswith("not UTF-8: byte 0xe9")
