"""The train stage's reports: the console gets step / total, ETA and loss as progress events (rank 0 only)."""

import json

from tiny_model import tiny_trainer

from pipeline import train
from pipeline.process import progress


def test_trainer_reports_steps_with_eta_and_loss(tiny_model_dir, tmp_path, monkeypatch):
    path = tmp_path / "progress.jsonl"
    monkeypatch.setenv(progress.ENV, str(path))
    monkeypatch.setattr(train.StepProgress, "EVERY_S", 0.0)  # every step, not every 2 s
    monkeypatch.setattr(progress, "_stage", "train")  # as `python -m pipeline train` sets it
    config = train.TrainConfig(max_steps=4, batch_size=2, logging_steps=2, max_seq_length=64, precision="fp32",
                               warmup_steps=0)
    tiny = tiny_trainer(tiny_model_dir, config, tmp_path / "out")
    tiny.remove_callback(train.StepMetrics)  # MLflow logging is not under test (no active run here)
    tiny.train()
    steps = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(s["event"], s["step"], s["total"]) for s in steps] == [("step", i, 4) for i in (1, 2, 3, 4)]
    assert all(s["eta_s"] is not None for s in steps) and steps[-1]["eta_s"] == 0
    assert steps[0]["loss"] is None and steps[1]["loss"] > 0  # the loss arrives with the first logging step
    assert progress.line(steps[1]).startswith("[train] step 2/4  loss ")
