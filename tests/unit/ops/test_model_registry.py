"""The model registry by hand: rollback moves champion and records who and why; a missing version fails cleanly."""


from ops import model_registry
from pipeline.config import ProjectConfig


def _config(tmp_path, project: ProjectConfig) -> str:
    import dataclasses

    import yaml

    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"project": dataclasses.asdict(project)}))
    return str(path)


def test_rollback_to_a_missing_version_fails_cleanly(tmp_path, capsys):
    project = ProjectConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "a"))
    assert model_registry.main(["rollback", "--config", _config(tmp_path, project), "--version", "7", "--reason", "x"]) == 1
    assert "registry error" in capsys.readouterr().err
