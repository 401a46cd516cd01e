"""Completion markers: a partition is read only when its marker is there and names exactly its files, with the
bytes they had when it was published; each refusal names the file and the rule (and both digests)."""

import hashlib
import json

import pytest

from pipeline.data import markers


def published(directory, **files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    marker = markers.describe(directory, source_day="2018-05-03")
    (directory / markers.NAME).write_bytes(markers.encode(marker))
    return marker


def test_a_published_partition_verifies_and_its_marker_lists_every_file_with_its_digest(tmp_path):
    marker = published(tmp_path / "dt=1", **{"a.jsonl": "one\n", "b.jsonl": "two\n"})
    assert marker["files"]["a.jsonl"] == {"sha256": hashlib.sha256(b"one\n").hexdigest(), "bytes": 4}
    assert markers.verify(tmp_path / "dt=1", "s3://x/dt=1") == json.loads((tmp_path / "dt=1" / "_SUCCESS").read_text())
    assert marker["source_day"] == "2018-05-03"


def test_no_marker_is_an_incomplete_partition(tmp_path):
    (tmp_path / "dt=1").mkdir()
    (tmp_path / "dt=1" / "a.jsonl").write_text("one\n")
    with pytest.raises(markers.IncompletePartition, match=r"s3://x/dt=1: no _SUCCESS marker; rule: .* written the marker, last"):
        markers.verify(tmp_path / "dt=1", "s3://x/dt=1")


def test_a_file_changed_after_the_marker_is_refused_naming_both_digests(tmp_path):
    published(tmp_path / "dt=1", **{"a.jsonl": "one\n"})
    (tmp_path / "dt=1" / "a.jsonl").write_text("rewritten\n")
    now, then = hashlib.sha256(b"rewritten\n").hexdigest(), hashlib.sha256(b"one\n").hexdigest()
    with pytest.raises(markers.IncompletePartition, match=f"dt=1/a.jsonl: sha256 {now}, but _SUCCESS says {then}"):
        markers.verify(tmp_path / "dt=1", "s3://x/dt=1")


@pytest.mark.parametrize("change, error", [
    (lambda d: (d / "late.jsonl").write_text("x\n"), r"late.jsonl: not named in _SUCCESS"),
    (lambda d: (d / "a.jsonl").unlink(), r"a.jsonl: named in _SUCCESS but missing"),
    (lambda d: (d / "_SUCCESS").write_text(""), r"_SUCCESS: not a marker"),
])
def test_files_added_removed_or_a_marker_that_is_not_one_are_refused(tmp_path, change, error):
    published(tmp_path / "dt=1", **{"a.jsonl": "one\n"})
    change(tmp_path / "dt=1")
    with pytest.raises(markers.IncompletePartition, match=error):
        markers.verify(tmp_path / "dt=1", "s3://x/dt=1")
