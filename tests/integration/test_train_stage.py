"""The train stage as a real command: plain Trainer and the same stage under DeepSpeed ZeRO-2 on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def stage(stage_name: str, config: Path, *args: str) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", stage_name, "--config", str(config), "--run-date", "2026-11-22",
         "--run-id", "train-test", *args],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def dataset(make_config):
    return stage("ingest", make_config())


@pytest.mark.timeout(600)
@pytest.mark.parametrize("deepspeed", [None, "configs/deepspeed/zero2.json"], ids=["trainer", "deepspeed-zero2"])
def test_train_stage_saves_a_loadable_model(make_config, dataset, deepspeed):
    config = make_config(train={"max_steps": 6, "logging_steps": 2, "deepspeed": deepspeed})
    model_dir = stage("train", config, "--dataset", str(dataset))
    assert {"model.safetensors", "tokenizer.json", "train_config.json", "manifest.json"} <= {
        p.name for p in model_dir.iterdir()}
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["global_step"] == 6 and manifest["train_loss"] > 0
    from pipeline import models

    model = models.load_model(str(model_dir))
    assert model.generation_config.eos_token_id == models.end_of_turn_id(models.load_tokenizer(str(model_dir)))


def test_stage_rejects_a_bad_config_with_exit_code_2(make_config):
    config = make_config(train={"max_stepz": 1})
    result = subprocess.run([sys.executable, "-m", "pipeline", "train", "--config", str(config), "--run-date",
                             "2026-11-22", "--dataset", "nowhere"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "unknown key(s) ['max_stepz']" in result.stderr
