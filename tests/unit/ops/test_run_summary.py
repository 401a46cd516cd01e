"""The run summary on a real SQLite MLflow store: candidate / champion / base side by side, the decision and where
to look; a DAG run that never reached promote says which stages ran instead of printing nan."""

import contextlib
import os

import pytest

from ops import run_summary
from pipeline.config import RunContext, load_project
from pipeline.tracking import runs


@pytest.fixture
def config(make_config):
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI, which tracking.connect prefers to the config:
    # without this, an earlier test's store would be read here.
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield make_config()
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def stage(config, run_id: str, name: str, metrics=None, tags=None, fail: bool = False):
    ctx = RunContext("2026-11-22", run_id, "nightly_chat_retrain")
    with pytest.raises(RuntimeError) if fail else contextlib.nullcontext():
        with runs.stage_run(load_project(config), ctx, name):
            runs.log_to_parent(metrics, tags)
            if fail:
                raise RuntimeError(f"{name} broke\nsecond line")


def test_a_run_without_promotion_shows_which_stages_ran(config, capsys):
    stage(config, "manual__only-train", "train", metrics={"train/loss": 2.5, "val/loss": 2.75})
    assert run_summary.main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and "promotion: " not in out
    assert "DAG run manual__only-train" in out and "stages: train ok" in out
    assert "training  loss 2.500, validation loss 2.750" in out
    assert "decision  none: promote did not complete in this DAG run (stages that ran: train)" in out
    assert "report" not in out  # no promote, no HTML report


def test_a_failed_stage_is_named_with_its_error(config, capsys):
    stage(config, "manual__bad", "ingest")
    stage(config, "manual__bad", "validate", fail=True)
    run_summary.main(["--config", str(config), "--run-id", "manual__bad"])
    out = capsys.readouterr().out
    assert "stages: ingest ok, validate failed" in out
    assert "FAILED    in validate: RuntimeError: validate broke\n            second line" in out


def test_a_promoted_run_shows_models_side_by_side_decision_and_links(config, capsys):
    scores = {"candidate/bleu": 12.5, "base/bleu": 4.0, "candidate/perplexity": 9.5, "base/perplexity": 20.0,
              "candidate/reply_tokens": 7.0}
    tags = {"promotion.decision": "promoted", "promotion.reason": "bleu 12.500 beats base model 4.000",
            "promotion.version": "1"}
    for name in ("ingest", "validate", "train", "evaluate"):
        stage(config, "manual__full", name)
    stage(config, "manual__full", "promote", metrics=scores, tags=tags)
    stage(config, "manual__later", "ingest")  # the latest DAG run now: --run-id must still find manual__full
    run_summary.main(["--config", str(config), "--run-id", "manual__full"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "stages: ingest ok, validate ok, train ok, evaluate ok, promote ok" in out
    header = next(line for line in lines if "candidate" in line and "base" in line)
    assert "champion" not in header  # no champion scored tonight: no empty column
    assert any(line.split() == ["bleu", "12.50", "4.00"] for line in lines)
    assert any(line.split() == ["reply", "length", "(tokens)", "7.00", "-"] for line in lines)
    assert "decision  promoted: bleu 12.500 beats base model 4.000" in out
    assert "model     tiny-chat version 1" in out  # no such registered model here: no aliases, no crash
    assert "`make ui`, then http://127.0.0.1:5000/#/experiments/" in out
    assert "/evaluation_report.html" in out


def test_the_run_page_is_a_link_only_for_a_tracking_server():
    assert run_summary.run_url("http://10.0.0.5:5000/", "3", "abc") == "http://10.0.0.5:5000/#/experiments/3/runs/abc"
    assert run_summary.run_url("sqlite:///.mlflow/mlflow.db", "3", "abc") is None


def test_no_run_yet_is_said_plainly(config, capsys):
    assert run_summary.main(["--config", str(config)]) == 1
    assert "no DAG run in MLflow experiment 'nightly-chat-retrain-test'" in capsys.readouterr().out
