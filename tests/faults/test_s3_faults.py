"""S3 failing under the stages: a fault-injecting proxy (s3_faults.py) sits between the pipeline and moto's S3 server.

    make test-faults        # or: .venv/bin/python -m pytest -m faults tests/faults/test_s3_faults.py  (~2-3 min)

Transient faults (HTTP 500, 503, 503 SlowDown, a connection dropped half-way through the answer) are retried with
backoff and the result is the one an undisturbed run gives: the same ingest partition digests, a complete checkpoint
mirror, the artifact's exact bytes. A persistent fault stops the work with an error naming the object and the
operation, and leaves nothing half-written. Three places: ingest reading its window from S3, the checkpoint mirror
(upload after each save, restore on another machine), and MLflow artifacts the tracking server proxies to S3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
import yaml
from dialogue_files import openai_record, sharegpt_record, write_jsonl, write_parquet
from harness import DATE, FAST_MLFLOW_CLIENT, REPO, digest
from s3_faults import S3FaultProxy

from ops import services
from pipeline.process.ports import free_port
from pipeline.storage import outputs, s3

TRANSIENT = ["500", "503", "slowdown", "drop"]


@pytest.fixture(scope="module")
def proxy(s3_server):
    """The proxy in front of moto, and every S3 client of this module (and its subprocesses) pointed at it."""
    proxy = S3FaultProxy(os.environ["AWS_ENDPOINT_URL"]).start()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield proxy
    proxy.stop()


@pytest.fixture
def faulty_s3(proxy):
    proxy.clear()
    proxy.requests.clear()
    yield proxy
    proxy.clear()


def _bucket() -> str:
    """A fresh bucket (through the proxy, before any fault is injected)."""
    name = f"s3-faults-{time.monotonic_ns()}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} if root.exists() else set()


# --- ingest reading a window of partitions from S3 -------------------------------------------------------------

def _ingest_config(home: Path, sources: list[dict], **project: str) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["project"].update({"data_root": str(home / "data"), "runs_root": str(home / "runs"), "experiment": home.name,
                           "tracking_uri": f"sqlite:///{home / 'mlflow.db'}", "artifact_root": str(home / "artifacts"),
                           **project})
    raw["ingest"] = {"window_days": 2, "sources": sources}
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True))
    return home / "config.yaml"


def _ingest(home: Path, sources: list[dict], env: dict | None = None, **project: str) -> subprocess.CompletedProcess:
    """The ingest stage as its Airflow task runs it; its scratch downloads go to home/tmp, so leftovers show."""
    config = _ingest_config(home, sources, **project)
    (home / "tmp").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "pipeline", "ingest", "--config", str(config), "--run-date", DATE,
                           "--run-id", "s3-faults"], cwd=REPO, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "TMPDIR": str(home / "tmp"), **(env or {})})


@pytest.fixture(scope="module")
def s3_window(proxy, tmp_path_factory):
    """Two days of OpenAI JSONL and a ShareGPT Parquet file on S3, and what an undisturbed ingest makes of them."""
    bucket, local = _bucket(), tmp_path_factory.mktemp("window")
    for day, first in [("2026-11-21", 0), ("2026-11-22", 100)]:
        write_jsonl(local / "openai" / f"dt={day}" / "chats.jsonl",
                    [openai_record(n, language="zh" if n % 5 == 0 else "en") for n in range(first, first + 100)],
                    raw_lines=[b'{"messages": ['])
    write_parquet(local / "sharegpt" / f"dt={DATE}" / "part-0.parquet", [sharegpt_record(n) for n in range(60)])
    s3.upload_dir(local, f"s3://{bucket}")
    sources = [{"format": "openai", "uri": f"s3://{bucket}/openai", "partitioned": True},
               {"format": "sharegpt", "uri": f"s3://{bucket}/sharegpt", "partitioned": True, "language": "en"}]
    home = tmp_path_factory.mktemp("undisturbed")
    result = _ingest(home, sources)
    assert result.returncode == 0, result.stderr
    partition = home / "data" / "conversations" / f"dt={DATE}"
    return SimpleNamespace(bucket=bucket, sources=sources, manifest=outputs.read_manifest(partition),
                           turns=digest(partition / "turns.parquet"), quarantine=digest(partition / "quarantine.jsonl"))


@pytest.mark.parametrize("fault, method, key", [
    ("500", "GET", rf"dt={DATE}/chats\.jsonl"),  # the run date's file
    ("503", "GET", "list-type"),  # the partition listings
    ("slowdown", "GET", r"part-0\.parquet"),
    ("drop", "GET", r"dt=2026-11-21/chats\.jsonl"),  # half the file arrives, then the connection is gone
    ("drop", "GET", "list-type"),  # half the listing's XML
    ("slowdown", "HEAD", r"chats\.jsonl"),  # the size check before each download
])
def test_ingest_rides_out_transient_s3_faults_with_the_undisturbed_output(s3_window, faulty_s3, tmp_path, fault,
                                                                           method, key):
    faulty_s3.inject(fault, times=2, method=method, key=key)
    result = _ingest(tmp_path, s3_window.sources)
    assert result.returncode == 0, result.stderr
    assert faulty_s3.injected(fault) == 2
    partition = tmp_path / "data" / "conversations" / f"dt={DATE}"
    assert outputs.read_manifest(partition) == s3_window.manifest  # same inputs, file digests, counts, digest
    assert digest(partition / "turns.parquet") == s3_window.turns
    assert digest(partition / "quarantine.jsonl") == s3_window.quarantine


@pytest.mark.parametrize("fault, attempts, says", [
    ("500", s3.RETRIES.max_attempts,
     "An error occurred (InternalError) when calling the GetObject operation (reached max retries: 5)"),
    ("drop", 5, "Max Retries Exceeded (last error: "),  # s3transfer re-reads a cut-off download 5 times
])
def test_ingest_stops_on_a_persistent_s3_fault_naming_the_object_with_nothing_written(s3_window, faulty_s3,
                                                                                       tmp_path, fault, attempts,
                                                                                       says):
    faulty_s3.inject(fault, times=None, method="GET", key=rf"dt={DATE}/chats\.jsonl")
    result = _ingest(tmp_path, s3_window.sources)
    assert result.returncode == 1
    obj = f"s3://{s3_window.bucket}/openai/dt={DATE}/chats.jsonl"
    assert f"ingest failed: S3 download {obj} failed: {says}" in result.stderr
    assert faulty_s3.injected(fault) == attempts
    assert _files(tmp_path / "data") == set() and _files(tmp_path / "tmp") == set()  # no partition, no scratch


# --- the checkpoint mirror: upload after each save, restore on another machine ---------------------------------

def _checkpoint(root: Path, step: int) -> Path:
    """A sealed checkpoint as the Trainer and SealCheckpoints leave it (tensor files, JSON state)."""
    import torch
    from safetensors.torch import save_file

    from pipeline.training import checkpoints

    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"weight": torch.randn(256, 256, generator=torch.Generator().manual_seed(step))},
              str(path / "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.ones(64) * step}}}, path / "optimizer.pt")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    checkpoints.seal(path)
    return path


def _mirror(bucket: str, local: Path, step: int) -> str:
    """Save checkpoint-<step> locally and run the mirror callback on it, as after a Trainer save (rank 0)."""
    from pipeline.training import checkpoints

    mirror = checkpoints.mirror_uri(f"s3://{bucket}/ckpt", local.parent)
    _checkpoint(local, step)
    state = SimpleNamespace(is_world_process_zero=True, global_step=step)
    checkpoints.MirrorCheckpoints(mirror).on_save(SimpleNamespace(output_dir=str(local)), state, None)
    return mirror


def _run_dir(machine: Path) -> Path:
    return machine / "runs" / "nightly" / "run_1" / "train" / "checkpoints"


def _with_fingerprint(local: Path, mirror: str) -> None:
    from pipeline.training import checkpoints

    checkpoints.claim(local, {"config": {"lr": 1e-4}})  # what prepare() mirrors before training starts
    bucket, prefix = s3.split(mirror)
    s3.client().upload_file(str(local / checkpoints.FINGERPRINT), bucket, f"{prefix}/{checkpoints.FINGERPRINT}")


@pytest.mark.parametrize("fault", TRANSIENT)
def test_checkpoint_mirror_and_restore_ride_out_transient_s3_faults(faulty_s3, tmp_path, fault):
    from pipeline.training import checkpoints

    bucket, local = _bucket(), _run_dir(tmp_path / "trainer")
    _with_fingerprint(local, checkpoints.mirror_uri(f"s3://{bucket}/ckpt", local.parent))
    faulty_s3.inject(fault, times=2, method="PUT", key=r"checkpoint-10/model\.safetensors")
    mirror = _mirror(bucket, local, 10)
    faulty_s3.inject(fault, times=2, method="GET", key=r"checkpoint-10/optimizer\.pt")
    elsewhere = _run_dir(tmp_path / "fresh-pod")
    checkpoints.restore(elsewhere, mirror)
    assert faulty_s3.injected(fault) == 4
    assert checkpoints.latest_complete(elsewhere) == elsewhere / "checkpoint-10"  # sealed, and verify() passed
    assert {name: digest(local / "checkpoint-10" / name) for name in _files(local / "checkpoint-10")} == {
        name: digest(elsewhere / "checkpoint-10" / name) for name in _files(elsewhere / "checkpoint-10")}


def test_a_persistent_fault_while_mirroring_fails_the_save_naming_the_object_and_leaves_no_seal(faulty_s3, tmp_path):
    from pipeline.training import checkpoints

    bucket, local = _bucket(), _run_dir(tmp_path / "trainer")
    _with_fingerprint(local, checkpoints.mirror_uri(f"s3://{bucket}/ckpt", local.parent))
    mirror = _mirror(bucket, local, 5)
    faulty_s3.inject("500", times=None, method="PUT", key=r"checkpoint-10/model\.safetensors")
    with pytest.raises(s3.ObjectStoreError) as failed:
        _mirror(bucket, local, 10)
    assert str(failed.value).startswith(f"S3 upload {mirror}/checkpoint-10/model.safetensors failed: ")
    assert faulty_s3.injected("500") == s3.RETRIES.max_attempts
    # The seal goes last, so the cut-off upload is not a checkpoint: a restore elsewhere takes checkpoint-5.
    prefix = s3.split(mirror)[1]
    assert f"{prefix}/checkpoint-10/{checkpoints.SEAL}" not in s3.keys(mirror)
    elsewhere = _run_dir(tmp_path / "fresh-pod")
    checkpoints.restore(elsewhere, mirror)
    assert checkpoints.latest_complete(elsewhere) == elsewhere / "checkpoint-5"


def test_a_persistent_fault_while_restoring_is_an_error_naming_the_object_with_nothing_restored(faulty_s3, tmp_path):
    from pipeline.training import checkpoints

    bucket, local = _bucket(), _run_dir(tmp_path / "trainer")
    _with_fingerprint(local, checkpoints.mirror_uri(f"s3://{bucket}/ckpt", local.parent))
    mirror = _mirror(bucket, local, 10)
    faulty_s3.inject("drop", times=None, method="GET", key=r"checkpoint-10/model\.safetensors")
    elsewhere = _run_dir(tmp_path / "fresh-pod")
    with pytest.raises(s3.ObjectStoreError) as failed:
        checkpoints.restore(elsewhere, mirror)
    assert str(failed.value).startswith(f"S3 download {mirror}/checkpoint-10/model.safetensors failed: ")
    assert _files(elsewhere) == set()  # no half-restored checkpoint, no .restoring scratch


# --- MLflow artifacts: the stage uploads to the tracking server, which proxies them to S3 (make up, terraform) --

@pytest.fixture(scope="module")
def artifact_server(proxy, tmp_path_factory):
    """`mlflow server --artifacts-destination s3://...` whose S3 client goes through the proxy, with the retries
    s3.retry_env() gives it (MLflow's S3 client takes them from the standard AWS variables)."""
    home, port, bucket = tmp_path_factory.mktemp("mlflow-server"), free_port(), _bucket()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}", "--serve-artifacts",
               "--artifacts-destination", f"s3://{bucket}/mlflow"]
    env = {**os.environ, **s3.retry_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(home / "server.log", "ab") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while not services.http_ok(f"{url}/health"):
        assert server.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()[-2000:]
        time.sleep(0.2)
    yield SimpleNamespace(url=url, bucket=bucket, log=home / "server.log")
    os.killpg(server.pid, 15)
    server.wait(timeout=30)


def _ingest_to_server(home: Path, server) -> subprocess.CompletedProcess:
    source = write_jsonl(home / "input" / "chats.jsonl", [openai_record(n) for n in range(40)],
                         raw_lines=[b"not json"])  # one quarantined line: quarantine.jsonl is logged too
    return _ingest(home, [{"format": "openai", "uri": str(source)}],
                   env={**FAST_MLFLOW_CLIENT, "MLFLOW_TRACKING_URI": server.url})


def _artifact_keys(server, experiment: str) -> dict[str, str]:
    """name under the run's artifacts -> S3 key, for the experiment's runs."""
    from mlflow.tracking import MlflowClient

    experiment_id = MlflowClient(server.url).get_experiment_by_name(experiment).experiment_id
    found = s3.keys(f"s3://{server.bucket}/mlflow/{experiment_id}")
    return {key.split("/artifacts/", 1)[1]: key for key in found}


@pytest.mark.parametrize("fault", TRANSIENT)
def test_artifacts_proxied_to_s3_ride_out_transient_faults(artifact_server, faulty_s3, tmp_path, fault):
    faulty_s3.inject(fault, times=2, method="PUT", key=r"/data/manifest\.json")
    result = _ingest_to_server(tmp_path, artifact_server)
    assert result.returncode == 0, result.stderr
    assert faulty_s3.injected(fault) == 2
    stored = _artifact_keys(artifact_server, tmp_path.name)
    assert set(stored) == {"data/manifest.json", "data/quarantine.jsonl"}
    body = boto3.client("s3").get_object(Bucket=artifact_server.bucket, Key=stored["data/manifest.json"])["Body"]
    partition = tmp_path / "data" / "conversations" / f"dt={DATE}"
    assert body.read() == (partition / outputs.MANIFEST).read_bytes()


def test_a_persistent_fault_on_an_artifact_fails_the_stage_naming_the_artifact(artifact_server, faulty_s3, tmp_path):
    from mlflow.tracking import MlflowClient

    faulty_s3.inject("500", times=None, method="PUT", key=r"/data/manifest\.json")
    result = _ingest_to_server(tmp_path, artifact_server)
    assert result.returncode == 1
    experiment = MlflowClient(artifact_server.url).get_experiment_by_name(tmp_path.name)
    [run] = MlflowClient(artifact_server.url).search_runs([experiment.experiment_id], "tags.`pipeline.stage` = 'ingest'")
    # The stage names the artifact (its run's data/manifest.json); the server's log names the S3 object and why.
    assert (f"ingest failed: API request to {artifact_server.url}/api/2.0/mlflow-artifacts/artifacts/"
            f"{experiment.experiment_id}/{run.info.run_id}/artifacts/data/manifest.json failed") in result.stderr
    s3_key = f"{artifact_server.bucket}/mlflow/{experiment.experiment_id}/{run.info.run_id}/artifacts/data/manifest.json"
    assert (f"to {s3_key}: An error occurred (InternalError) when calling the PutObject operation "
            f"(reached max retries: {s3.RETRIES.max_attempts - 1})") in artifact_server.log.read_text()
    assert faulty_s3.injected("500") == s3.RETRIES.max_attempts  # retry_env() reached MLflow's S3 client
    assert run.info.status == "FAILED" and "data/manifest.json" in run.data.tags["failure.error"]
    assert "data/manifest.json" not in _artifact_keys(artifact_server, tmp_path.name)  # no partial object


def test_artifacts_written_straight_to_s3_are_retried_and_a_persistent_fault_names_the_object(faulty_s3, tmp_path):
    """project.artifact_root: s3://... with a SQLite store: the stage's own MLflow client uploads with boto3."""
    bucket = _bucket()
    source = write_jsonl(tmp_path / "input" / "chats.jsonl", [openai_record(n) for n in range(40)])
    partition = tmp_path / "data" / "conversations" / f"dt={DATE}"
    env = s3.retry_env()  # what the task environment should carry for MLflow's S3 client
    faulty_s3.inject("slowdown", times=2, method="PUT", key=r"/data/manifest\.json")
    result = _ingest(tmp_path, [{"format": "openai", "uri": str(source)}], env=env, artifact_root=f"s3://{bucket}/direct")
    assert result.returncode == 0, result.stderr
    [key] = [k for k in s3.keys(f"s3://{bucket}/direct") if k.endswith("/data/manifest.json")]
    assert boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read() == (partition / "manifest.json").read_bytes()
    faulty_s3.inject("500", times=None, method="PUT", key=r"/data/manifest\.json")
    result = _ingest(tmp_path, [{"format": "openai", "uri": str(source)}], env=env, artifact_root=f"s3://{bucket}/direct")
    assert result.returncode == 1
    assert f"ingest failed: Failed to upload {partition}/manifest.json to {bucket}/direct/" in result.stderr
    assert "/artifacts/data/manifest.json: An error occurred (InternalError) when calling the PutObject" in result.stderr
    assert faulty_s3.injected("slowdown") == 2 and faulty_s3.injected("500") == s3.RETRIES.max_attempts
