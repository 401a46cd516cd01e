"""The skip exit code is the one Airflow's BashOperator skips on by default (the DAG sets it on the Docker and
Kubernetes operators too: tests/dags/test_runtimes.py), and Skipped is not mistaken for a failure by the CLI
(tests/unit/test_cli.py)."""

from airflow.providers.standard.operators.bash import BashOperator

from pipeline.process import outcomes


def test_the_skip_code_is_airflows_own_default():
    task = BashOperator(task_id="t", bash_command="exit 99")
    assert list(task.skip_on_exit_code) == [outcomes.SKIPPED_EXIT_CODE]
    assert not issubclass(outcomes.Skipped, (ValueError, OSError))  # no stage's own error handling catches it
