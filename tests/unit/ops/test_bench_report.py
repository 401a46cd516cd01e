"""The benchmark table of docs/benchmarks.md comes from bench-results/*.json: one row per result file, target met or not."""

import json
from pathlib import Path

import pytest

from ops import bench_report as report


def write(directory: Path, name: str, payload: dict) -> None:
    (directory / name).write_text(json.dumps(payload))


def test_rows_from_result_files_and_the_table_between_the_pages_markers(tmp_path):
    results = tmp_path / "bench-results"
    results.mkdir()
    write(results, "metrics.json", {"benchmark": "metrics", "pairs": 10000, "seconds": 12.5, "target": "<= 10 s"})
    write(results, "training.json", {"benchmark": "training", "row": {"what": "training", "result": "3.1x",
                                                                       "target": ">= 2.5x", "met": True}})
    write(results, "unknown.json", {"benchmark": "something-else"})
    rows = report.rows(results)
    assert [(what.split(",")[0], met, name) for what, _, _, met, name in rows] == [
        ("BLEU + chrF + ROUGE-1/2/L", False, "metrics.json"), ("training", True, "training.json")]
    page = tmp_path / "benchmarks.md"
    page.write_text(f"intro\n{report.START}\nold table\n{report.END}\nafter\n")
    report.main(["--results", str(results), "--page", str(page)])
    text = page.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("after\n")
    assert "| 10,000 pairs in 12.5 s | <= 10 s | **no** | `metrics.json` |" in text
    assert "| training | 3.1x | >= 2.5x | yes | `training.json` |" in text


def test_a_page_without_markers_is_an_error_naming_it(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text("no markers\n")
    with pytest.raises(SystemExit, match=r"benchmarks.md: no <!-- bench-table:start -->"):
        report.main(["--results", str(tmp_path), "--page", str(page)])
