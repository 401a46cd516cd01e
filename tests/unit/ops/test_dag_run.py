"""`make run`'s console: a progress file becomes the lines a person reads; a failed DAG run names its task, shows
the end of that task's output and exits non-zero; the stages get the caller's environment."""

import io
import json
import sys
import textwrap

from ops import dag_run
from pipeline.process import progress

EVENTS = [
    {"stage": "ingest", "event": "stage_start"},
    {"stage": "ingest", "event": "stage_end", "status": "ok", "seconds": 3.2},
    {"stage": "train", "event": "stage_start"},
    {"stage": "train", "event": "step", "step": 12, "total": 60, "loss": 2.314, "eta_s": 190},
    {"stage": "train", "event": "stage_end", "status": "ok", "seconds": 242},
    {"stage": "evaluate", "event": "generate", "model": "candidate", "batch": 2, "batches": 3, "replies": 64,
     "total": 96},
    {"stage": "promote", "event": "stage_end", "status": "failed", "seconds": 1, "error": "KeyError: 'bleu'"},
]

# What `airflow dags test` prints around a failing stage (abridged from a real run).
AIRFLOW_LOG = textwrap.dedent("""\
    2026-11-23T04:43:27.4Z [info     ] creating dag run [airflow.serialization.definitions.dag] loc=dag.py:615 run_id=manual__2026-11-23T04:43:27.362922+00:00
    2026-11-23T04:43:28.1Z [info     ] [DAG TEST] starting task_id=ingest map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
    2026-11-23T04:43:29.1Z [info     ] ingested [airflow.task.hooks.airflow.providers.standard.hooks.subprocess.SubprocessHook] loc=subprocess.py:106
    2026-11-23T04:43:29.2Z [info     ] [DAG TEST] end task task_id=ingest map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
    2026-11-23T04:43:30.1Z [info     ] [DAG TEST] starting task_id=validate map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
    2026-11-23T04:43:30.2Z [info     ] Output:                        [airflow.task.hooks.airflow.providers.standard.hooks.subprocess.SubprocessHook] loc=subprocess.py:92
    2026-11-23T04:43:40.8Z [info     ] validate failed: 1 critical rule(s) broken: [airflow.task.hooks.airflow.providers.standard.hooks.subprocess.SubprocessHook] loc=subprocess.py:106
    2026-11-23T04:43:40.9Z [info     ] - min_conversations [splits] [airflow.task.hooks.airflow.providers.standard.hooks.subprocess.SubprocessHook] loc=subprocess.py:106
    2026-11-23T04:43:41.8Z [error    ] Task failed with exception [task] loc=task_runner.py:1000
    2026-11-23T04:43:41.9Z [info     ] Task instance state updated [airflow.api_fastapi.execution_api.routes.task_instances] new_state=failed rows_affected=1
    2026-11-23T04:43:42.0Z [info     ] [DAG TEST] end task task_id=validate map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
    2026-11-23T04:43:45.9Z [info     ] DagRun Finished: dag_id=nightly_chat_retrain, state=failed [airflow.models.dagrun.DagRun]
    """)


def test_a_progress_file_renders_as_console_lines(tmp_path):
    path = tmp_path / "progress.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in EVENTS) + '{"stage": "train", "ev')  # last: half-written
    out = io.StringIO()
    position = progress.follow(str(path), progress.Renderer(out, tty=False))
    assert out.getvalue().splitlines() == [
        "[ingest] started", "[ingest] done in 3s", "[train] started", "[train] step 12/60  loss 2.31  ETA 3m10s",
        "[train] done in 4m02s", "[evaluate] candidate 64/96 replies (batch 2/3)",
        "[promote] FAILED after 1s: KeyError: 'bleu'"]
    assert position == path.read_bytes().rfind(b"\n") + 1  # the half-written line is read on the next call


def test_the_failed_task_and_its_output_are_found_in_airflows_log(tmp_path):
    assert dag_run.airflow_run_id(AIRFLOW_LOG) == "manual__2026-11-23T04:43:27.362922+00:00"
    assert dag_run.failed_task(AIRFLOW_LOG, tmp_path / "no-progress.jsonl") == "validate"
    assert dag_run.task_output(AIRFLOW_LOG, "validate") == [
        "validate failed: 1 critical rule(s) broken:", "- min_conversations [splits]"]


def fake_airflow(monkeypatch, exit_code: int):
    """Stand-ins for `airflow dags test` (writes progress and a log, checks its environment) and the summary."""
    script = textwrap.dedent(f"""
        import json, os, sys
        assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5999"  # the caller's env reached the stages
        with open(os.environ["{progress.ENV}"], "a") as events:
            events.write(json.dumps({{"stage": "train", "event": "stage_start"}}) + "\\n")
            events.write(json.dumps({{"stage": "train", "event": "stage_end", "status": "failed" if {exit_code} else
                                      "ok", "seconds": 2, "error": "RuntimeError: boom"}}) + "\\n")
        print({AIRFLOW_LOG.replace("validate", "train")!r})
        sys.exit({exit_code})
        """)
    monkeypatch.setattr(dag_run, "airflow_command", lambda date, config: [sys.executable, "-c", script])
    monkeypatch.setattr(dag_run, "summary_command", lambda config, run_id: [
        sys.executable, "-c", f"import os; print('SUMMARY {{}} {{}}'.format({run_id!r}, os.environ['MLFLOW_TRACKING_URI']))"])
    monkeypatch.setattr(dag_run, "POLL_S", 0.05)


def test_a_failed_run_names_the_task_shows_its_output_and_exits_non_zero(tmp_path, monkeypatch, capfd):
    fake_airflow(monkeypatch, exit_code=1)
    env = {"AIRFLOW_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": "http://127.0.0.1:5999", "PATH": "/usr/bin:/bin"}
    code = dag_run.main(["--config", "configs/tiny.yaml", "--date", "2026-11-22"], env=env)
    out = capfd.readouterr().out
    assert code == 1
    assert "[train] started\n[train] FAILED after 2s: RuntimeError: boom\n" in out
    assert "task 'train' failed" in out and "validate failed" not in out
    assert "train failed: 1 critical rule(s) broken:\n- min_conversations [splits]\n" in out
    assert "SUMMARY manual__2026-11-23T04:43:27.362922+00:00 http://127.0.0.1:5999" in out
    (log,) = (tmp_path / "logs").glob("dag-run-2026-11-22-*.log")
    assert f"Airflow log: {log}" in out and "[DAG TEST] starting task_id=train" in log.read_text()


def test_a_successful_run_ends_with_the_summary(tmp_path, monkeypatch, capfd):
    fake_airflow(monkeypatch, exit_code=0)
    env = {"AIRFLOW_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": "http://127.0.0.1:5999", "PATH": "/usr/bin:/bin"}
    assert dag_run.main(["--config", "configs/tiny.yaml", "--date", "2026-11-22"], env=env) == 0
    out = capfd.readouterr().out
    assert "[train] done in 2s" in out and "succeeded in" in out and "FAILED" not in out
    assert out.rstrip().endswith("SUMMARY manual__2026-11-23T04:43:27.362922+00:00 http://127.0.0.1:5999")


def test_overrides_become_a_config_file_named_by_its_content(tmp_path):
    """`make run SET="train.precision=fp32 train.seed=7"`: the DAG takes a config path, so the overrides are written
    to a derived config; the stages then load and validate it like any other."""
    from pipeline.config import load_section
    from pipeline.train import TrainConfig

    overrides = ["train.precision=fp32", "train.seed=7"]
    path = dag_run.config_with_overrides("configs/embedded.yaml", overrides, tmp_path)
    assert path == dag_run.config_with_overrides("configs/embedded.yaml", overrides, tmp_path)  # same content, same name
    train = load_section(path, "train", TrainConfig)
    assert (train.precision, train.seed, train.max_steps) == ("fp32", 7, 60)
    assert load_section(path, "train", TrainConfig).system_prompt == "You are a helpful chatbot."
