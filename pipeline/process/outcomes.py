"""How a stage process ends, as every runtime of the DAG reads it: 0 done (its output URI in the XCom file), 1
failed (Airflow retries), 2 config error, SKIPPED_EXIT_CODE skipped: Airflow marks the task skipped, and with it
every task downstream (BashOperator's, DockerOperator's and KubernetesPodOperator's `skip_on_exit_code`).
A stage skips by raising Skipped, with the reason a person reads in the task log and on the MLflow run.
"""

from __future__ import annotations

SKIPPED_EXIT_CODE = 99  # BashOperator's default skip_on_exit_code; the DAG sets it on every runtime's operator


class Skipped(RuntimeError):
    """Nothing to do tonight, by the config's choice (an empty day with ingest.empty_day=skip); not a failure."""
