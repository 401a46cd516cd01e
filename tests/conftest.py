"""Shared fixtures: an offline environment, a tiny chat model, per-test project configs, an Airflow DB.

Everything runs offline on the CPU: the base model is a 2-layer Llama built in ~1 s (tiny_model.py), the data is
the installed chatterbot corpus or the committed tests/data, MLflow is SQLite in a temp dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
# As Airflow's own processes do (the DAG imports chat_retrain/ beside it): a test tier run alone must import the DAG.
sys.path.insert(0, str(REPO / "dags"))


def pytest_configure(config):
    # Before anything imports airflow: its settings are read once, at import.
    home = tempfile.mkdtemp(prefix="airflow-home-")
    os.environ.update(
        AIRFLOW_HOME=home,
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="True",
        MLFLOW_DISABLE_TELEMETRY="true",
        GX_ANALYTICS_ENABLED="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        CHECKPOINT_DISABLE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    _absl_handler_on_the_real_stderr()
    # Tests choose their own stores; a shell that ran `eval "$(python -m ops.stack env)"` must not redirect
    # them to the running stack (the environment wins over a config's tracking_uri).
    for name in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)


def _absl_handler_on_the_real_stderr():
    """absl (imported by rouge_score, so by the metrics) makes a logging handler when it is imported; the handler
    keeps the sys.stderr of that moment and closes it when it is closed, unless it is the *current* sys.stderr.
    Airflow's logging set-up (at `import airflow`, e.g. in a test's dag.test) closes every existing handler. Made
    while pytest collects (capturing), the handler holds pytest's global capture file; a test that captures with
    capfd or capsys when Airflow sets up its logging then closes that file, and the pytest process dies at the end
    ("lost sys.stderr", ValueError: I/O operation on closed file). Made here, before collection, it holds the real
    stderr, which it never closes."""
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__


TIERS = ("unit", "dags", "integration", "training", "dagruns", "slow", "containers", "stack", "faults", "nights")


def tier_of(path: Path) -> str | None:
    """The tier of a test is the first folder under tests/ it lives in: tests/unit/data/test_sources.py -> unit."""
    if not path.resolve().is_relative_to(REPO / "tests"):
        return None
    parts = path.resolve().relative_to(REPO / "tests").parts
    return parts[0] if len(parts) > 1 and parts[0] in TIERS else None


def pytest_collection_modifyitems(items):
    for item in items:
        if tier := tier_of(Path(item.fspath)):
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def no_tracking_uri_from_earlier_tests():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, and that variable wins over a config's tracking_uri:
    a test that calls it must not send the next test's stages (and their subprocesses) to its store."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def feed_nights(tmp_path_factory):
    """A project whose data_root holds four nights of the chat feed, ingested (tests/feed_nights.py)."""
    from feed_nights import ingest_nights

    return ingest_nights(tmp_path_factory.mktemp("feed-nights"))


@pytest.fixture
def make_config(tmp_path, tiny_model_dir):
    """Write configs/tiny.yaml with its project paths in this test's temp dir; `changes` patch sections."""

    def make(**changes) -> Path:
        raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
        raw["project"].update(
            data_root=str(tmp_path / "data"), runs_root=str(tmp_path / "runs"),
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "artifacts"),
            base_model=str(tiny_model_dir),
        )
        for section, values in changes.items():
            raw.setdefault(section, {}).update(values)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(raw, allow_unicode=True))
        return path

    return make


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated Airflow metadata DB (SQLite) in the session's AIRFLOW_HOME."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "airflow", "pools", "set", "training", "1", "training"], check=True,
                   capture_output=True)
    return os.environ["AIRFLOW_HOME"]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server over real HTTP on 127.0.0.1; boto3 finds it through AWS_ENDPOINT_URL (set for subprocesses
    too). Yields a fresh bucket name factory."""
    import boto3

    from pipeline.process.ports import free_port

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    import time

    for _ in range(100):
        try:
            boto3.client("s3").list_buckets()
            break
        except Exception:
            time.sleep(0.1)
    counter = iter(range(10_000))

    def bucket() -> str:
        name = f"test-bucket-{next(counter)}"
        boto3.client("s3").create_bucket(Bucket=name)
        return name

    yield bucket
    server.terminate()
    server.wait(timeout=10)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
