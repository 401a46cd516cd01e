"""A person's yes before champion moves: a pass awaits approval as challenger; approve moves champion only from the
version the gate compared with; reject and a second, different answer leave it; answers are recorded idempotently.
The registry is real MLflow on SQLite, the versions registered by promote itself."""

import dataclasses

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ops import model_registry
from pipeline import promote
from pipeline.config import ConfigError
from pipeline.promotion import approval
from pipeline.tracking import registry

APPROVAL = {"require_approval": True}


def _answer(tmp_path, project, verb: str, version: int) -> int:
    config = tmp_path / "registry.yaml"
    config.write_text(yaml.safe_dump({"project": dataclasses.asdict(project)}))
    return model_registry.main([verb, "--config", str(config), "--version", str(version)])


@pytest.mark.timeout(300)
def test_only_an_approved_version_becomes_champion(tmp_path, promote_night, capsys):
    project, output = promote_night("night-1", bleu=8.0, **APPROVAL)
    client = MlflowClient(tracking_uri=project.tracking_uri)
    first = client.get_model_version("chat", "1")
    assert registry.champion(client, "chat") is None  # passed the gate, waits
    assert first.aliases == ["challenger"] and first.tags["promotion.decision"] == "awaiting approval"
    assert (first.tags[approval.STATUS], first.tags[approval.COMPARED]) == ("awaiting", "none")
    assert first.description.startswith("**Decision: AWAITING APPROVAL")
    assert '"awaiting_approval": true' in (output / "promotion.json").read_text()
    asked = approval.status(client, "chat", first, timeout_hours=20)
    assert asked["awaiting"] and asked["subject"] == "Promote chat v1 to champion?"
    assert "the base model (no champion)" in asked["body"] and "20 h" in asked["body"]

    assert _answer(tmp_path, project, "reject", 1) == 0
    assert _answer(tmp_path, project, "reject", 1) == 0  # recorded again: idempotent
    assert _answer(tmp_path, project, "approve", 1) == 1  # another answer to an answered version is refused
    assert "was answered 'reject'" in capsys.readouterr().err
    first = client.get_model_version("chat", "1")
    assert registry.champion(client, "chat") is None and first.tags[approval.STATUS] == "rejected"
    assert first.tags["promotion.decision"] == "rejected" and "approval: rejected by" in first.tags["promotion.reason"]
    assert first.description.count("**Approval: rejected**") == 1
    assert not approval.status(client, "chat", first, 20)["awaiting"]

    promote_night("night-2", bleu=9.0, **APPROVAL)
    assert _answer(tmp_path, project, "approve", 2) == 0
    second = client.get_model_version("chat", "2")
    assert registry.champion(client, "chat").version == 2 and second.tags["promotion.decision"] == "promoted"
    assert "v2: approved" in capsys.readouterr().out

    promote_night("night-3", bleu=12.0, **APPROVAL)  # compared with champion v2
    client.set_registered_model_alias("chat", "champion", "1")  # moved meanwhile (a rollback)
    assert _answer(tmp_path, project, "approve", 3) == 0
    third = client.get_model_version("chat", "3")
    assert registry.champion(client, "chat").version == 1  # the approval did not overwrite the move
    assert third.tags[approval.STATUS] == "rejected"
    assert "champion moved to v1 since the gate compared with v2" in third.tags["promotion.reason"]

    promote_night("night-4", bleu=1.0, **APPROVAL)  # the gate says no: nothing to approve
    assert _answer(tmp_path, project, "approve", 4) == 1
    assert "v4 does not await approval (rejected: bleu 1.000 does not beat" in capsys.readouterr().err


def test_an_answer_interrupted_before_its_status_is_finished_by_recording_it_again(tmp_path, promote_night):
    project, _ = promote_night("night-1", bleu=8.0, **APPROVAL)
    client = MlflowClient(tracking_uri=project.tracking_uri)
    client.set_model_version_tag("chat", "1", approval.ANSWER, "approve")  # the crash: answer written, nothing else
    version = client.get_model_version("chat", "1")
    assert approval.status(client, "chat", version, 20)["answered"] == "approve"
    assert approval.record(client, "chat", "1", "approve", by="retry")["status"] == "approved"
    assert registry.champion(client, "chat").version == 1


def test_the_approval_timeout_stays_under_a_day():
    with pytest.raises(ConfigError, match="approval_timeout_hours must be in"):
        promote.PromoteConfig(require_approval=True, approval_timeout_hours=30)
