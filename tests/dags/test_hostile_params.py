"""Run parameters are data, never code: whoever may trigger a run (UI, REST, `airflow dags trigger -c`) sets
`params.config`, and the run id and the upstream XComs are rendered into the stage commands too. A hostile value
(a quote, `$()`, backticks, a newline, `;`) must neither run a command on the worker, which holds the S3 and MLflow
credentials, nor reach a pod's environment: Airflow refuses a config that is not a YAML path, and in every runtime
a rendered value reaches the stage as one argv word."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "dags"))

from chat_retrain import runtimes  # noqa: E402

DAG_FILE = REPO / "dags" / "nightly_chat_retrain.py"


def _hostile(marker: Path) -> dict[str, str]:
    """One payload per way out of a shell word, each of which would create `marker`-<n> if bash evaluated it."""
    return {"quote": f"configs/embedded.yaml'; touch {marker}-1; echo '",
            "substitution": f"$(touch {marker}-2).yaml",
            "backticks": f"`touch {marker}-3`.yaml",
            "newline": f"x.yaml\ntouch {marker}-4",
            "semicolon": f"x.yaml; touch {marker}-5"}


def _dag(monkeypatch, runtime: str):
    monkeypatch.setenv("CHAT_RETRAIN_RUNTIME", runtime)
    return runpy.run_path(str(DAG_FILE))["dag"]


def _context(dag, config: str, run_id: str) -> dict:
    """What Airflow renders the templates with, for the fields the stage commands use."""
    class DagRun:
        run_type = "manual"
    return {"params": {"config": config, "allow_backfill_promotion": False, "allow_older_data": False},
            "ds": "2026-11-20", "run_id": run_id, "dag": dag, "dag_run": DagRun(),
            "ti": type("TI", (), {"xcom_pull": staticmethod(lambda task_ids: f"data/{task_ids}`touch x`")})()}


@pytest.mark.parametrize("vector", ["quote", "substitution", "backticks", "newline", "semicolon"])
def test_the_local_runtimes_rendered_command_runs_no_hostile_value(monkeypatch, tmp_path, vector):
    """The promote task's real bash script (it carries the most templated arguments), rendered by Airflow's own
    templating with the hostile value as config and as run id, run by bash: the stage starts, refuses the config
    by name, and no payload ran."""
    dag = _dag(monkeypatch, "local")
    task = dag.get_task("promote")
    hostile = _hostile(tmp_path / "ran")[vector]
    env = task.render_template(task.env, _context(dag, hostile, run_id=hostile))
    assert "{{" not in task.bash_command  # nothing is rendered into the script itself
    result = subprocess.run(["bash", "-c", task.bash_command], env={**os.environ, **env}, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"config error: {hostile}: config file not found" in result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_docker_runtime_passes_each_rendered_value_as_one_argv_word_without_a_shell(monkeypatch, tmp_path):
    dag = _dag(monkeypatch, "docker")
    task = dag.get_task("ingest")
    hostile = _hostile(tmp_path / "ran")
    for value in hostile.values():
        argv = task.render_template(task.command, _context(dag, value, run_id="manual__x"))
        assert task.entrypoint == ["python", "-m", "pipeline"]  # exec form: no shell between Docker and python
        assert argv[argv.index("--config") + 1] == value


def test_the_kubernetes_runtime_keeps_a_dollar_literal_so_no_secret_is_expanded_into_argv(monkeypatch):
    """The kubelet expands $(NAME) in a container's args from its environment (its secrets among them)."""
    dag = _dag(monkeypatch, "kubernetes")
    task = dag.get_task("ingest")
    argv = task.render_template(task.arguments, _context(dag, "$(AWS_SECRET_ACCESS_KEY).yaml", "r$(HOME)"))
    assert argv[argv.index("--config") + 1] == "$$(AWS_SECRET_ACCESS_KEY).yaml"
    assert argv[argv.index("--run-id") + 1] == "r$$(HOME)"
    assert argv[argv.index("--run-date") + 1] == "2026-11-20"
    assert runtimes.kubernetes_literal("--config") == "--config"


@pytest.mark.parametrize("vector", ["quote", "substitution"])
def test_airflow_refuses_a_run_whose_config_is_not_a_yaml_path(airflow_db, tmp_path, vector):
    """Through Airflow itself: `airflow dags test -c` validates the params against their schema before any task."""
    hostile = _hostile(tmp_path / "ran")[vector]
    result = subprocess.run([sys.executable, "-m", "airflow", "dags", "test", "nightly_chat_retrain", "2026-11-20",
                             "-c", json.dumps({"config": hostile})], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags")})
    assert result.returncode != 0
    assert "does not match" in result.stdout + result.stderr and "config" in result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
