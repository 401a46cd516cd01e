"""The HTML evaluation report: the decision and each check first, scores per language and on the anchor set, the
last champions' trend, and the replies themselves, escaped (a reply is model output, never markup)."""

import json
from types import SimpleNamespace

import pandas as pd

from pipeline.config import RunContext
from pipeline.promotion import gate, report
from pipeline.storage import outputs

SCORES = {"candidate": {"bleu": 7.5, "bleu_en": 7.0, "bleu_zh": 9.0, "rougeL": 20.0, "anchor_bleu": 1.5},
          "base": {"bleu": 1.5, "bleu_en": 1.0, "bleu_zh": 3.0, "rougeL": 10.0, "anchor_bleu": 1.0}}


def evaluation_dir(tmp_path):
    directory = tmp_path / "evaluate"
    directory.mkdir()
    (directory / outputs.EVALUATION).write_text(json.dumps({
        "scores": SCORES, "examples": 2, "data_digest": "ab" * 32,
        "anchor": {"name": "chitchat", "digest": "cd" * 32, "source": "package chitchat_dataset", "examples": 1}}))
    pd.DataFrame({"language": ["en", "zh"], "prompt": ["Hi", "你好"], "reference": ["Hello", "你好！"],
                  "candidate": ["<script>alert(1)</script>", "你好"], "base": ["Hey", "嗨"]}).to_parquet(
        directory / outputs.SAMPLES["held-out"])
    pd.DataFrame({"language": ["en"], "prompt": ["How are you?"], "reference": ["Fine."],
                  "candidate": ["Good & you?"], "base": ["ok"]}).to_parquet(directory / outputs.SAMPLES["anchor"])
    return directory


def test_the_report_leads_with_the_decision_and_escapes_every_reply(tmp_path):
    decision = gate.Decision(True, "bleu", 7.5, 1.5, "base model", "bleu 7.500 beats base model 1.500",
                             ["PASS bleu: 7.500 vs base model 1.500 (point estimate)"])
    history = [SimpleNamespace(version="1", tags={"metric.anchor_bleu": "1.2"})]
    path = report.write(tmp_path / outputs.REPORT, evaluation_dir(tmp_path), decision, SimpleNamespace(version="2"),
                        history, RunContext("2026-11-22", "scheduled__2026-11-22", "nightly", "scheduled"))
    page = path.read_text()
    assert page.index("Decision: PROMOTED") < page.index("Overall") < page.index("Language: en")
    assert "Language: zh" in page and "Anchor set: chitchat" in page and "PASS bleu: 7.500" in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Good &amp; you?" in page and "data:image/png;base64," in page
    assert report.history_points(history, SimpleNamespace(version="2"), SCORES, "anchor_") == [
        ("v1", {"bleu": 1.2, "rougeL": None, "chrf1": None, "similarity": None}),
        ("v2 (candidate)", {"bleu": 1.5, "rougeL": None, "chrf1": None, "similarity": None})]


def test_the_memory_set_has_its_own_section_once_there_is_one(tmp_path):
    directory = evaluation_dir(tmp_path)
    evaluation = json.loads((directory / outputs.EVALUATION).read_text())
    decision = gate.Decision(False, "bleu", 7.5, 7.4, "champion v1", "no", [])
    ctx = RunContext("2026-11-23", "scheduled__2026-11-23", "nightly", "scheduled")
    first = report.write(tmp_path / "first.html", directory, decision, SimpleNamespace(version="2"), [], ctx)
    assert "Memory set" not in first.read_text()  # the first night has no earlier partition
    scores = {model: {**values, "memory_rougeL": 30.0 + index} for index, (model, values) in enumerate(SCORES.items())}
    (directory / outputs.EVALUATION).write_text(json.dumps({**evaluation, "scores": scores, "memory": {
        "examples": 64, "partitions": ["2026-11-22", "2026-11-21"], "missing_days": 28, "candidates": 300}}))
    page = report.write(tmp_path / "later.html", directory, decision, SimpleNamespace(version="2"), [], ctx).read_text()
    assert "Memory set: earlier nights' held-out replies" in page and "64 replies from the test split of 2 earlier" in page
    assert page.index("Memory set") > page.index("Overall") and "30.00" in page and "31.00" in page
