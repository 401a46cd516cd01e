"""Three nights of the dated chat feed through the real DAG (`airflow dags test`, as `make run` drives it), one
after the other, by `python -m ops.nights` on the tiny model: the feed published first, each night ingests its own
published day, starts from the champion, replays earlier nights, is scored on the memory set and the anchor set
(outside the feed), and the trajectory is written and logged.

    make test-nights        # ~4 min on 2 cores
"""

from __future__ import annotations

import datetime
import json
import math

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ops import nights
from pipeline.evaluation import anchor

pytestmark = pytest.mark.timeout(1500)
END = datetime.date(2026, 11, 3)
# The feed ends 2026-11-17, so the nights get source days 2018-11-01..03: 46, 38, 34 sessions, 28, 30 and 21 of
# them with two speakers (its last days hold one session each: empty days).
FEED_END = datetime.date(2026, 11, 17)


@pytest.fixture(scope="module")
def three_nights(tmp_path_factory, tiny_model_dir, airflow_db):
    root = tmp_path_factory.mktemp("nights")
    outside = {"package": "chitchat_dataset", "size": 8, "seed": 0, "history_turns": 3, "outside_feed_only": True}
    drawn = anchor.draw([c for c in anchor.read_conversations(anchor.settings(outside)) if anchor.outside_feed(c[0])],
                        anchor.settings(outside))
    raw = yaml.safe_load(open("configs/tiny.yaml"))
    raw["project"].update(data_root=str(root / "data"), runs_root=str(root / "runs"), base_model=str(tiny_model_dir),
                          tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=str(root / "artifacts"))
    raw["ingest"] = {"sources": [{"format": "openai", "uri": str(root / "feed"), "partitioned": True, "marker": True,
                                  "language": "en", "max_quarantine_ratio": 0.7},
                                 {"format": "chatterbot", "languages": ["english"], "role": "replay"}],
                     "validation_fraction": 0.2, "test_fraction": 0.2, "empty_day": "skip"}
    raw["validate"] = {"languages": ["en"], "min_conversations": {"train": 5, "validation": 1, "test": 1},
                       "max_duplicate_ratio": 0.5}
    raw["train"].update(init="champion", replay=1.0, drop_replyless=True)
    raw["evaluate"].update(history_turns=5, held_out_days=2, max_examples=None, memory={"size": 8, "days": 5},
                           anchor={**outside, "digest": anchor.digest(drawn)})
    raw["promote"].update(max_regression={"memory_rougeL": 50.0}, min_examples=4)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    code = nights.main(["--nights", "3", "--config", str(config), "--end", END.isoformat(), "--feed",
                        str(root / "feed"), "--feed-end", FEED_END.isoformat()])
    return {"code": code, "root": root, "raw": raw,
            "rows": json.loads((root / "runs" / "nights" / "2026-11-01_2026-11-03" / "nights.json").read_text())}


def test_three_nights_run_in_order_each_on_its_own_published_day(three_nights):
    rows = three_nights["rows"]
    assert three_nights["code"] == 0 and [r["date"] for r in rows] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert all(r["ok"] and r["conversations"] > 0 for r in rows)
    assert rows[0]["decision"] == "promoted"  # the first night against the base model (perplexity, tiny config)
    assert all(r["replayed"] > 0 for r in rows)  # night 1 replays the static set, later nights earlier nights too


def test_the_static_set_is_replayed_never_tested_and_the_held_out_split_is_the_feeds(three_nights):
    """chatterbot as ingest.sources[].role: replay: split 'replay' in every partition, never test or validation;
    each night's train run counts what it replayed per source, drawn from it and, after night 1, from the feed."""
    import pandas as pd

    for row in three_nights["rows"]:
        turns = pd.read_parquet(three_nights["root"] / "data" / "conversations" / f"dt={row['date']}" / "turns.parquet")
        static = turns["source"].str.startswith("package://chatterbot_corpus")
        assert set(turns.loc[static, "split"]) == {"replay"}
        assert set(turns.loc[~static, "split"]) == {"train", "validation", "test"}
        assert row["conversations"] == turns.loc[~static, "conversation_id"].nunique()  # tonight's own, not the set
    client = MlflowClient(f"sqlite:///{three_nights['root'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(three_nights["raw"]["project"]["experiment"])
    trains = sorted(client.search_runs([experiment.experiment_id], filter_string="tags.`pipeline.stage` = 'train'"),
                    key=lambda run: run.info.start_time)
    assert len(trains) == 3 and all(run.data.metrics.get("replay/source/chatterbot_corpus", 0) > 0 for run in trains)
    assert trains[0].data.metrics["replay/source/chatterbot_corpus"] == trains[0].data.metrics["replay/conversations"]
    assert all(run.data.metrics.get("replay/source/feed", 0) > 0 for run in trains[1:])


def test_the_memory_set_appears_after_the_held_out_window_and_the_anchor_every_night(three_nights):
    """held_out_days: 2, so the memory set draws from the days before yesterday: from night 3 on."""
    rows = three_nights["rows"]
    assert all(math.isnan(r["candidate/memory"]) for r in rows[:2]) and not math.isnan(rows[2]["candidate/memory"])
    assert all(not math.isnan(r["base/anchor"]) and not math.isnan(r["candidate/anchor"]) for r in rows)
    assert all(not math.isnan(r["champion/test"]) for r in rows[1:])  # a champion exists from night 2 on


def test_the_trajectory_is_a_chart_and_an_mlflow_run_with_one_step_per_night(three_nights):
    root = three_nights["root"]
    assert (root / "runs" / "nights" / "2026-11-01_2026-11-03" / "trajectory.png").stat().st_size > 10_000
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(three_nights["raw"]["project"]["experiment"])
    (run,) = client.search_runs([experiment.experiment_id], filter_string="tags.`pipeline.level` = 'nights'")
    assert run.info.run_name == "nights 2026-11-01..2026-11-03"
    history = client.get_metric_history(run.info.run_id, "champion/anchor_rougeL")
    assert [m.step for m in history] == [1, 2, 3]
    assert run.data.metrics["nights/promoted"] == sum(r["decision"] == "promoted" for r in three_nights["rows"])
    dag_runs = client.search_runs([experiment.experiment_id], filter_string="tags.`pipeline.level` = 'dag_run'")
    assert sorted(r.data.tags["airflow.logical_date"][:10] for r in dag_runs) == ["2026-11-01", "2026-11-02",
                                                                                   "2026-11-03"]


def test_the_window_holds_yesterdays_test_split_whose_incumbent_replies_come_from_the_cache(three_nights):
    """Night 3 judges its own test split and night 2's; the base model met night 2's prompts last night (and the
    memory set's, night 1's, two nights ago): exactly those replies are reused, only tonight's are generated."""
    import pandas as pd

    root = three_nights["root"]
    (night3,) = [p.parent for p in (root / "runs").glob("**/evaluate/evaluation.json")
                 if json.loads(p.read_text())["dataset"].endswith("dt=2026-11-03")]
    report, samples = json.loads((night3 / "evaluation.json").read_text()), pd.read_parquet(night3 / "samples.parquet")
    tonight = pd.read_parquet(root / "data" / "conversations" / "dt=2026-11-03" / "turns.parquet")
    from_yesterday = int((~samples["conversation_id"].isin(tonight["conversation_id"])).sum())
    assert report["held_out"]["earlier_partitions"] == ["2026-11-02"] and from_yesterday > 0
    assert report["cache"]["replies_reused"]["base"]["held_out"] == [from_yesterday, len(samples)]
    assert report["cache"]["replies_reused"]["base"]["memory"] == [report["memory"]["examples"]] * 2
    assert report["cache"]["outcomes"]["base"]["anchor"] == "hit"
    row = three_nights["rows"][2]  # the table counts replies over the three models
    assert row["reused"] >= from_yesterday + report["memory"]["examples"] + 8 and row["generated"] > 0


def test_the_strategy_summary_scores_the_model_in_force_against_the_base_model(three_nights, capsys):
    """What docs/nights.md compares strategies by, from the nights' own evaluation samples (--summary-only reruns
    nothing)."""
    root, rows = three_nights["root"], three_nights["rows"]
    summary = nights.strategy_summary(str(root / "config.yaml"), rows, resamples=200)
    assert summary["promotions"] == sum(r["decision"] == "promoted" for r in rows) >= 1
    assert summary["model_after_last_night"] in ("candidate", "champion")
    assert "rougeL" in summary["anchor_gain_over_base"]
    for gain in summary["anchor_gain_over_base"].values():
        assert gain["ci"][0] <= gain["gain"] <= gain["ci"][1] and gain["conversations"] == 8
    assert list(summary["seconds"]) == ["night 1", "night 2", "night 3"]
    assert nights.main(["--nights", "3", "--config", str(root / "config.yaml"), "--end", END.isoformat(),
                        "--feed", str(root / "feed"), "--feed-end", FEED_END.isoformat(), "--summary-only"]) == 0
    assert '"anchor_gain_over_base"' in capsys.readouterr().out


def test_a_resumed_run_skips_the_nights_written_and_reruns_the_one_interrupted(three_nights, capsys):
    """Killed during night 3: only nights 1-2 are written. --resume keeps their rows, reruns night 3 alone (a second
    DAG run of its date), and writes all three again. Last in this module: it adds a DAG run."""
    progress = three_nights["root"] / "runs" / "nights" / "2026-11-01_2026-11-03" / "nights.json"
    progress.write_text(json.dumps(three_nights["rows"][:2]))
    code = nights.main(["--nights", "3", "--config", str(three_nights["root"] / "config.yaml"), "--end",
                        END.isoformat(), "--feed", str(three_nights["root"] / "feed"), "--feed-end",
                        FEED_END.isoformat(), "--resume"])
    assert code == 0 and "resuming: 2 of 3 nights done" in capsys.readouterr().out
    rows = json.loads(progress.read_text())
    assert json.dumps(rows[:2]) == json.dumps(three_nights["rows"][:2])  # as written (NaN != NaN: compare text)
    assert [row["date"] for row in rows] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    client = MlflowClient(three_nights["raw"]["project"]["tracking_uri"])
    runs_of = {date: [r for r in client.search_runs([client.get_experiment_by_name(
        three_nights["raw"]["project"]["experiment"]).experiment_id], "tags.`pipeline.level` = 'dag_run'")
        if r.data.tags.get("airflow.logical_date", "")[:10] == date] for date in ("2026-11-01", "2026-11-03")}
    assert len(runs_of["2026-11-01"]) == 1 and len(runs_of["2026-11-03"]) == 2
