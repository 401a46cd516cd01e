"""Failpoints: a named point holds the stage exactly there while the hold file exists; any other name, or none,
passes straight through (every real run)."""

import threading
import time

from pipeline.process import failpoints


def test_an_unnamed_point_passes_straight_through(monkeypatch):
    monkeypatch.delenv(failpoints.ENV, raising=False)
    failpoints.hit("promote.registered")
    monkeypatch.setenv(failpoints.ENV, "train.saved")
    failpoints.hit("promote.registered")


def test_the_named_point_holds_until_the_hold_file_is_removed(monkeypatch, tmp_path, capsys):
    hold = tmp_path / "hold"
    monkeypatch.setenv(failpoints.ENV, "promote.registered")
    monkeypatch.setenv(failpoints.HOLD_ENV, str(hold))
    released_at = []

    def release():
        while not hold.exists():  # the stage creates it when it arrives
            time.sleep(0.01)
        time.sleep(0.2)
        released_at.append(time.monotonic())
        hold.unlink()

    helper = threading.Thread(target=release)
    helper.start()
    failpoints.hit("promote.registered")
    passed_at = time.monotonic()
    helper.join()
    assert released_at and passed_at >= released_at[0]  # it waited for the test, not the other way round
    assert "failpoint promote.registered reached" in capsys.readouterr().err


def test_a_point_for_one_run_type_holds_only_that_run_types_stages(monkeypatch, tmp_path):
    monkeypatch.setenv(failpoints.ENV, "promote.start@scheduled, evaluate.start@backfill")
    monkeypatch.setenv(failpoints.HOLD_ENV, str(tmp_path / "hold-{point}"))
    failpoints.hit("promote.start", "backfill")  # not listed for backfills: passes
    failpoints.hit("promote.start")  # a stage that does not say its run type: passes
    hold = tmp_path / "hold-promote.start@scheduled"
    helper = threading.Thread(target=lambda: (_wait_for(hold), hold.unlink()))
    helper.start()
    failpoints.hit("promote.start", "scheduled")  # held on a file of its own until the test removes it
    helper.join()
    assert not hold.exists() and not (tmp_path / "hold-evaluate.start@backfill").exists()


def _wait_for(path):
    while not path.exists():
        time.sleep(0.01)
