"""The stage command line: argument checks, the run type the backfill guard depends on, the output URI written to
the XCom file (the runtimes' channel) and printed last on stdout (for people and hand-run scripts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.config import run_type_name


@pytest.mark.parametrize("rendered, expected", [
    ("DagRunType.BACKFILL_JOB", "backfill"), ("backfill", "backfill"), ("DagRunType.SCHEDULED", "scheduled"),
    ("DagRunType.MANUAL", "manual"), ("scheduled", "scheduled"),
])
def test_run_type_accepts_airflows_enum_rendering(rendered, expected):
    assert run_type_name(rendered) == expected


def test_bad_date_and_missing_input_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as bad_date:
        cli.main(["ingest", "--config", "configs/tiny.yaml", "--run-date", "22/11/2026"])
    assert bad_date.value.code == 2 and "is not a YYYY-MM-DD date" in capsys.readouterr().err
    with pytest.raises(SystemExit) as missing:
        cli.main(["train", "--config", "configs/tiny.yaml", "--run-date", "2026-11-22"])
    assert missing.value.code == 2 and "--dataset" in capsys.readouterr().err


def test_the_deepspeed_launchers_local_rank_argument_is_accepted():
    args = cli.parser().parse_args(["train", "--config", "c.yaml", "--run-date", "2026-11-22", "--dataset", "d",
                                    "--local_rank=1"])
    assert args.stage == "train" and args.local_rank == 1


def test_the_output_uri_goes_to_the_xcom_file_and_last_on_stdout(make_config, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_PROGRESS"}
    env["PIPELINE_XCOM_FILE"] = str(tmp_path / "xcom" / "return.json")
    result = subprocess.run([sys.executable, "-m", "pipeline", "ingest", "--config", str(make_config()),
                             "--run-date", "2026-11-22"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, timeout=300)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and "[ingest] started" in lines and any(
        line.startswith("[ingest] done in ") for line in lines)
    uri = str(tmp_path / "data" / "conversations" / "dt=2026-11-22")
    assert lines[-1] == uri
    assert json.loads((tmp_path / "xcom" / "return.json").read_text()) == uri


def test_one_reporter_per_node_and_the_xcom_file_is_one_json_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIPELINE_XCOM_FILE", str(tmp_path / "xcom" / "return.json"))
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's other local ranks return the same URI: they stay silent
    cli._report(Path("data/conversations/dt=2026-11-22"))
    assert not (tmp_path / "xcom").exists() and capsys.readouterr().out == ""
    monkeypatch.setenv("LOCAL_RANK", "0")
    cli._report(Path("data/conversations/dt=2026-11-22"))
    assert capsys.readouterr().out == "data/conversations/dt=2026-11-22\n"  # one line, not one per rank
    # One line (the local runtime prints it as the task's last output line); no temp file left beside it.
    assert [p.name for p in (tmp_path / "xcom").iterdir()] == ["return.json"]
    assert (tmp_path / "xcom" / "return.json").read_text().splitlines() == ['"data/conversations/dt=2026-11-22"']


def test_a_failed_stage_writes_no_xcom_file(make_config, tmp_path):
    env = {**os.environ, "PIPELINE_XCOM_FILE": str(tmp_path / "return.json")}
    result = subprocess.run([sys.executable, "-m", "pipeline", "ingest", "--config",
                             str(make_config(ingest={"no_such_setting": 1})), "--run-date", "2026-11-22"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and "no_such_setting" in result.stderr
    assert not (tmp_path / "return.json").exists()


def test_a_skipping_stage_exits_with_the_skip_code_and_writes_no_xcom(make_config, tmp_path):
    """An empty day with ingest.empty_day=skip: exit code 99, which every runtime's operator turns into a skipped
    task (and skipped tasks downstream)."""
    from dialogue_files import write_jsonl

    from pipeline.process import outcomes

    write_jsonl(tmp_path / "in" / "dt=2026-11-22" / "a.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    config = make_config(ingest={"sources": [{"format": "openai", "uri": str(tmp_path / "in"), "partitioned": True}],
                                 "empty_day": "skip"})
    env = {**os.environ, "PIPELINE_XCOM_FILE": str(tmp_path / "return.json")}
    result = subprocess.run([sys.executable, "-m", "pipeline", "ingest", "--config", str(config), "--run-date",
                             "2026-11-22"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == outcomes.SKIPPED_EXIT_CODE == 99, result.stderr[-2000:]
    assert "ingest skipped: empty day 2026-11-22: 0 usable conversations" in result.stderr
    assert not (tmp_path / "return.json").exists()
