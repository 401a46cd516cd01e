"""Fixtures shared by the unit tests of promote and of what acts on its decisions."""

import json

import pandas as pd
import pytest

from pipeline import promote
from pipeline.config import ProjectConfig, RunContext


@pytest.fixture
def promote_night(tmp_path, tiny_model_dir):
    """promote.run for a hand-made evaluation of the tiny model: (project, output dir). The registry is real MLflow
    on SQLite in tmp_path; `bleu` is the candidate's score (the base model's is 4.0); `gate` sets PromoteConfig."""
    (tiny_model_dir / "train_config.json").write_text(json.dumps({"train.system_prompt": None}))
    project = ProjectConfig(runs_root=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                            artifact_root=str(tmp_path / "artifacts"), registered_model="chat")

    def run(run_id: str, bleu: float, run_type: str = "scheduled", **gate):
        evaluation, dataset = tmp_path / run_id, tmp_path / "dataset"
        evaluation.mkdir(exist_ok=True)
        dataset.mkdir(exist_ok=True)
        (dataset / "manifest.json").write_text(json.dumps(
            {"dataset": "conversations", "partition_date": "2026-11-22", "digest": "abc" * 8, "input_digest": "def" * 8}))
        (evaluation / "evaluation.json").write_text(json.dumps({
            "scores": {"candidate": {"bleu": bleu, "bleu_en": bleu}, "base": {"bleu": 4.0, "bleu_en": 4.0}},
            "model": str(tiny_model_dir), "data_digest": "abc" * 8, "data_input_digest": "def" * 8, "examples": 1,
            "dataset": str(dataset)}))
        pd.DataFrame({"language": ["en"], "prompt": ["hi"], "reference": ["hello"], "candidate": ["hey"]}).to_parquet(
            evaluation / "samples.parquet")
        ctx = RunContext("2026-11-22", run_id, "dag", run_type)
        # Guards need metrics this hand-made evaluation lacks (an unknown guard key is a config error): gate only.
        config = promote.PromoteConfig(**{"max_regression": {}, **gate})
        return project, promote.run(config, project, ctx, str(evaluation))

    return run
