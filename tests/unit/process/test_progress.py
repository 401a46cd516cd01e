"""Progress a person follows: events land in PIPELINE_PROGRESS as JSON lines (one per write, from any process),
read as `[train] step 12/60  loss 2.31  ETA 3m10s` lines; a plain log is throttled, a failed stage says why."""

import io
import json
import re
import subprocess
import sys

import pytest

from pipeline import cli
from pipeline.process import progress


@pytest.fixture(autouse=True)
def _stage(monkeypatch):
    monkeypatch.setattr(progress, "_stage", "pipeline")  # stage_started sets it for the whole process


def events(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_events_are_appended_to_the_progress_file(tmp_path, monkeypatch):
    path = tmp_path / "progress.jsonl"
    monkeypatch.setenv(progress.ENV, str(path))
    progress.stage_started("train")
    progress.training_step(12, 60, 190.0, 2.3149)
    progress.generation("candidate", batch=2, batches=3, replies=64, total=96)
    progress.stage_finished(242.0)
    recorded = events(path)
    assert [e["event"] for e in recorded] == ["stage_start", "step", "generate", "stage_end"]
    assert {e["stage"] for e in recorded} == {"train"}
    assert [progress.line(e) for e in recorded] == [
        "[train] started", "[train] step 12/60  loss 2.31  ETA 3m10s",
        "[train] candidate 64/96 replies (batch 2/3)", "[train] done in 4m02s"]


def test_concurrent_stage_processes_write_whole_lines(tmp_path):
    path = tmp_path / "progress.jsonl"
    writer = ("import sys; from pipeline.process import progress; progress.stage_started(sys.argv[1]); "
              "[progress.training_step(i, 300, 1.0, 0.5) for i in range(300)]")
    env = {**__import__("os").environ, progress.ENV: str(path)}
    procs = [subprocess.Popen([sys.executable, "-c", writer, name], env=env) for name in ("a", "b", "c")]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    recorded = events(path)  # every line parses: no two writes interleaved
    assert len(recorded) == 3 * 301 and {e["stage"] for e in recorded} == {"a", "b", "c"}


def test_other_ranks_stay_silent(tmp_path, monkeypatch):
    monkeypatch.setenv(progress.ENV, str(tmp_path / "progress.jsonl"))
    monkeypatch.setenv("RANK", "1")
    progress.training_step(1, 10, None, None)
    assert not (tmp_path / "progress.jsonl").exists()


def test_plain_rendering_is_throttled_and_keeps_the_last_step():
    out = io.StringIO()
    renderer = progress.Renderer(out, tty=False)
    renderer.render({"stage": "train", "event": "stage_start"})
    for step in range(1, 61):
        renderer.render({"stage": "train", "event": "step", "step": step, "total": 60, "loss": 2.0, "eta_s": 60 - step})
    renderer.render({"stage": "train", "event": "stage_end", "status": "ok", "seconds": 61})
    lines = out.getvalue().splitlines()
    assert lines[0] == "[train] started" and lines[-1] == "[train] done in 1m01s"
    steps = [line for line in lines if " step " in line]
    assert len(steps) == 11 and steps[-1] == "[train] step 60/60  loss 2.00  ETA 0s"


def test_terminal_rendering_draws_bars():
    out = io.StringIO()
    renderer = progress.Renderer(out, tty=True)
    for replies in (32, 64, 96):
        renderer.render({"stage": "evaluate", "event": "generate", "model": "base", "batch": replies // 32,
                         "batches": 3, "replies": replies, "total": 96})
    renderer.close()
    assert "[evaluate] base" in out.getvalue() and "96/96" in out.getvalue()


@pytest.mark.parametrize("seconds, text", [(5, "5s"), (242, "4m02s"), (3780, "1h03m")])
def test_durations_read_short(seconds, text):
    assert progress.duration(seconds) == text


def test_a_stage_reports_its_start_and_its_failure(tmp_path, monkeypatch):
    path = tmp_path / "progress.jsonl"
    monkeypatch.setenv(progress.ENV, str(path))
    code = cli.main(["ingest", "--config", str(tmp_path / "missing.yaml"), "--run-date", "2026-11-22"])
    start, end = events(path)
    assert code == 2 and (start["event"], start["stage"]) == ("stage_start", "ingest")
    assert end["status"] == "failed" and end["error"].startswith("config error:")
    assert re.match(r"\[ingest\] FAILED after \d+s: config error: .*missing.yaml: config file not found$",
                    progress.line(end))


def test_an_unwritable_progress_file_never_fails_a_stage(tmp_path, monkeypatch):
    monkeypatch.setenv(progress.ENV, str(tmp_path / "no-such-dir" / "progress.jsonl"))
    progress.stage_started("ingest")  # no exception: the console is best-effort
