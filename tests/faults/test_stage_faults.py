"""Every stage killed mid-way (kill -9), train and evaluate also SIGTERM-ed (an Airflow timeout, a pod eviction),
and the MLflow tracking server killed during train, evaluate and promote; each time the task's retry (the same
command) finishes the night. Nothing is lost or half-written, no MLflow run is left RUNNING, no model version is
registered twice, and every output has the digest of an undisturbed night's.

    make test-faults        # this file: ~6 min on 2 cores (three nights of the tiny model on one MLflow server)
"""

from __future__ import annotations

import json
import signal

import pytest
from harness import Night, TrackingServer, digest, hidden_leftovers, kill9, wait_for
from mlflow.tracking import MlflowClient

from pipeline.data import partitions

pytestmark = pytest.mark.timeout(1800)
STAGES = ("ingest", "validate", "train", "evaluate", "promote")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = TrackingServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.kill()


def new_night(tmp_path_factory, server, tiny_model_dir, name: str) -> Night:
    return Night(tmp_path_factory.mktemp(name, numbered=False), server, tiny_model_dir)


def succeed(night: Night, stage: str) -> None:
    result = night.run(stage)
    assert result.returncode == 0, f"{stage} retry failed:\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def calm(tmp_path_factory, server, tiny_model_dir) -> Night:
    night = new_night(tmp_path_factory, server, tiny_model_dir, "calm")
    for stage in STAGES:
        succeed(night, stage)
    return night


@pytest.fixture(scope="module")
def killed(tmp_path_factory, server, tiny_model_dir, calm) -> tuple[Night, dict]:
    """Each stage: kill -9 at a point where it has done real work but not published it (train and evaluate: a
    SIGTERM first, then kill -9 of the next attempt), then its retry. What each attempt left is kept in `seen`."""
    night, seen = new_night(tmp_path_factory, server, tiny_model_dir, "killed"), {}
    kill9(night.held_at("ingest", "publish:dt=2026-11-22"))  # written in scratch, not yet renamed into place
    seen["ingest"] = {"partition": (night.home / "data" / "conversations" / "dt=2026-11-22").exists()}
    succeed(night, "ingest")
    kill9(night.held_at("validate", "publish:validate"))
    seen["validate"] = {"output": night.run_dir("validate").exists()}
    succeed(night, "validate")

    checkpoints = night.run_dir("train") / "checkpoints"
    stages = {"train": night.start("train")}
    wait_for(lambda: (checkpoints / "checkpoint-10" / "trainer_state.json").exists(), stages["train"], 300,
             "no checkpoint-10")
    stages["train"].send_signal(signal.SIGTERM)
    seen["train"] = {"sigterm_exit": stages["train"].wait(timeout=300), "sigterm_log": night.log("train")}
    attempt = night.start("train")  # resumes from the SIGTERM checkpoint; killed after its next one
    before = set(checkpoints.glob("checkpoint-*"))
    wait_for(lambda: any((c / "trainer_state.json").exists() for c in set(checkpoints.glob("checkpoint-*")) - before),
             attempt, 300, "the second attempt saved no checkpoint")
    kill9(attempt)
    seen["train"]["model_after_kill"] = (night.run_dir("train") / "model").exists()
    succeed(night, "train")

    for signum in (signal.SIGTERM, signal.SIGKILL):  # each during the candidate's replies
        events = night.home / f"progress-evaluate-{signum}.jsonl"
        attempt = night.start("evaluate", PIPELINE_PROGRESS=str(events))
        wait_for(lambda: any(e.get("event") == "generate" for e in night.progress_events(events)), attempt, 300,  # noqa: B023
                 "evaluate generated nothing")
        attempt.send_signal(signum)
        seen.setdefault("evaluate", {})[signum.name] = attempt.wait(timeout=120)
    seen["evaluate"]["output"] = night.run_dir("evaluate").exists()
    succeed(night, "evaluate")

    kill9(night.held_at("promote", "promote.registered"))  # the version exists, champion not yet decided
    succeed(night, "promote")
    return night, seen


@pytest.fixture(scope="module")
def outage(tmp_path_factory, server, tiny_model_dir, calm) -> tuple[Night, dict]:
    """The tracking server killed during train, evaluate and promote: the task fails; with the server back (restarted
    on the same store), the retry finishes the night."""
    night, failed = new_night(tmp_path_factory, server, tiny_model_dir, "outage"), {}
    succeed(night, "ingest")
    succeed(night, "validate")
    checkpoints = night.run_dir("train") / "checkpoints"
    attempt = night.start("train")
    wait_for(lambda: (checkpoints / "checkpoint-10" / "trainer_state.json").exists(), attempt, 300, "no checkpoint")
    server.kill()
    failed["train"] = (attempt.wait(timeout=600), night.log("train"))
    server.start()
    succeed(night, "train")

    events = night.home / "progress-evaluate.jsonl"
    attempt = night.start("evaluate", PIPELINE_PROGRESS=str(events))
    wait_for(lambda: any(e.get("event") == "generate" for e in night.progress_events(events)), attempt, 300,
             "evaluate generated nothing")
    server.kill()
    failed["evaluate"] = (attempt.wait(timeout=600), night.log("evaluate"))
    server.start()
    succeed(night, "evaluate")

    attempt = night.held_at("promote", "promote.registered")
    server.kill()
    (night.home / "hold-promote").unlink()  # let it go on, into the dead server
    failed["promote"] = (attempt.wait(timeout=600), night.log("promote"))
    server.start()
    succeed(night, "promote")
    return night, failed


def same_outputs(night: Night, calm: Night) -> None:
    """The night's outputs have the digests of the undisturbed night's, stage by stage."""
    partition = "data/conversations/dt=2026-11-22/turns.parquet"
    assert digest(night.home / partition) == digest(calm.home / partition)
    assert partitions.unpin(night.outputs["validate"])[1] == partitions.unpin(calm.outputs["validate"])[1]
    weights = night.run_dir("train") / "model" / "model.safetensors"
    assert digest(weights) == digest(calm.run_dir("train") / "model" / "model.safetensors")
    assert digest(night.run_dir("evaluate") / "samples.parquet") == digest(calm.run_dir("evaluate") / "samples.parquet")
    scores = [json.loads((n.run_dir("evaluate") / "evaluation.json").read_text())["scores"] for n in (night, calm)]
    assert scores[0] == scores[1]
    decisions = [json.loads((n.run_dir("promote") / "promotion.json").read_text()) for n in (night, calm)]
    assert [{k: d[k] for k in ("promote", "version", "metric", "candidate", "incumbent")} for d in decisions] == 2 * [
        {k: decisions[1][k] for k in ("promote", "version", "metric", "candidate", "incumbent")}]


def registry_and_runs(night: Night) -> tuple[list, list]:
    client = MlflowClient(night.server.url)
    name = f"tiny-{night.home.name}"  # search results carry no aliases: fetch each version
    versions = [client.get_model_version(name, v.version) for v in client.search_model_versions(f"name = '{name}'")]
    experiment = client.get_experiment_by_name(night.home.name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return versions, runs


def test_the_undisturbed_night_promotes_its_model(calm):
    versions, runs = registry_and_runs(calm)
    assert [(v.version, sorted(v.aliases)) for v in versions] == [("1", ["challenger", "champion"])]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_kill_9_of_each_stage_then_its_retry_loses_nothing(killed, calm):
    night, seen = killed
    assert seen["ingest"] == {"partition": False} and seen["validate"] == {"output": False}  # nothing half-published
    assert seen["train"]["model_after_kill"] is False and seen["evaluate"]["output"] is False
    assert hidden_leftovers(night.home) == []  # the retries swept the killed writers' scratch directories
    same_outputs(night, calm)


def test_sigterm_stops_train_at_a_checkpoint_and_evaluate_cleanly(killed):
    night, seen = killed
    assert seen["train"]["sigterm_exit"] == 1 and "stopped by SIGTERM at step" in seen["train"]["sigterm_log"]
    assert seen["evaluate"]["SIGTERM"] == 1 and seen["evaluate"]["SIGKILL"] == -signal.SIGKILL
    resumed = json.loads((night.run_dir("train") / "model" / "manifest.json").read_text())["resumed_from"]
    assert resumed and resumed.startswith("checkpoint-")


def test_killed_attempts_leave_no_run_running_and_no_duplicate_version(killed):
    night, _ = killed
    versions, runs = registry_and_runs(night)
    assert [(v.version, sorted(v.aliases)) for v in versions] == [("1", ["challenger", "champion"])]  # promote killed after registering
    by_stage = {}
    for run in runs:
        by_stage.setdefault(run.data.tags.get("pipeline.stage", "dag_run"), []).append(run.info.status)
    assert "RUNNING" not in {status for statuses in by_stage.values() for status in statuses}
    for stage in STAGES:  # the last attempt finished; every earlier one is FAILED or KILLED, none forgotten
        assert by_stage[stage][0] == "FINISHED" and set(by_stage[stage][1:]) <= {"FAILED", "KILLED"}, (stage, by_stage)
    assert len(by_stage["train"]) == 3 and len(by_stage["evaluate"]) == 3


@pytest.mark.parametrize("stage", ["train", "evaluate", "promote"])
def test_a_dead_tracking_server_fails_the_task_and_the_retry_succeeds(outage, stage):
    night, failed = outage
    code, log = failed[stage]
    assert code == 1, log[-3000:]
    assert night.server.url.split("//")[1] in log or "Connection refused" in log, log[-3000:]


def test_after_the_outage_nothing_is_running_duplicated_or_different(outage, calm):
    night, _ = outage
    versions, runs = registry_and_runs(night)
    assert [(v.version, sorted(v.aliases)) for v in versions] == [("1", ["challenger", "champion"])]
    assert "RUNNING" not in {r.info.status for r in runs}
    assert hidden_leftovers(night.home) == []
    same_outputs(night, calm)
