"""The train stage as a real command: plain Trainer, LoRA and freeze modes, DeepSpeed ZeRO-2 in one process and in
two (torchrun, gloo), and a SIGTERM-ed run that resumes from its checkpoint."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from pipeline.process.ports import free_port
from pipeline.training import throughput

REPO = Path(__file__).resolve().parents[2]


def command(stage_name: str, config: Path, *args: str, run_id: str = "train-test") -> list[str]:
    return ["-m", "pipeline", stage_name, "--config", str(config), "--run-date", "2026-11-22", "--run-id", run_id,
            *args]


def stage(stage_name: str, config: Path, *args: str, launcher: list[str] | None = None, **kwargs) -> Path:
    result = subprocess.run([*(launcher or [sys.executable]), *command(stage_name, config, *args, **kwargs)],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def dataset(make_config):
    return stage("ingest", make_config())


def train_runs(config: Path) -> list:
    import yaml

    project = yaml.safe_load(config.read_text())["project"]
    mlflow.set_tracking_uri(project["tracking_uri"])
    return mlflow.search_runs(experiment_names=[project["experiment"]], output_format="list",
                              filter_string="tags.`pipeline.stage` = 'train'")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("settings", [{"peak_tflops": 2.0}, {"deepspeed": "configs/deepspeed/zero2.json"},
                                      {"precision": "bf16_states"}], ids=["trainer", "deepspeed-zero2", "bf16-states"])
def test_train_stage_saves_a_loadable_model(make_config, dataset, settings):
    config = make_config(train={"max_steps": 6, "logging_steps": 2, **settings})
    model_dir = stage("train", config, "--dataset", str(dataset))
    assert {"model.safetensors", "tokenizer.json", "train_config.json", "manifest.json"} <= {
        p.name for p in model_dir.iterdir()}
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["global_step"] == 6 and manifest["train_loss"] > 0
    assert manifest["padding_waste"] < 0.10  # packed rows: almost every position is a real token
    from pipeline.model import loading

    model = loading.load_model(str(model_dir))
    assert model.generation_config.eos_token_id == loading.end_of_turn_id(loading.load_tokenizer(str(model_dir)))
    assert model.config.use_cache  # off while training, back on for generation
    (run,) = train_runs(config)
    metrics = run.data.metrics
    assert metrics["train/tokens_per_second"] > 0 and "train/grad_norm" in metrics
    # MFU as on a GPU, from the same code: FLOPs per token x tokens/s over the peak
    flops = throughput.training_flops_per_token(model, json.loads((model_dir / "train_config.json").read_text())[
        "train.max_seq_length"])
    assert metrics["train/model_tflops_per_second"] == pytest.approx(metrics["train/tokens_per_second"] * flops / 1e12)
    if "peak_tflops" in settings:  # a CPU has no peak in the table: MFU only where one is configured
        assert metrics["train/mfu"] == pytest.approx(metrics["train/model_tflops_per_second"] / settings["peak_tflops"])
    else:
        assert "train/mfu" not in metrics
    assert 0.3 < metrics["train/peak_rss_gb"] < 64  # the process holds the model and its optimizer state
    assert run.data.params["train.resumed_from"] == "none" and run.data.params["train.seed"] == "42"
    # the stage command re-executed itself on tcmalloc where it is installed
    from pipeline.process import allocator

    assert run.data.tags["pipeline.allocator"] == ("tcmalloc" if allocator.find() else "system")
    if "precision" in settings:  # bf16 weights, moments and gradients: what was asked is what ran
        assert run.data.params["train.resolved_precision"] == settings["precision"]
    assert not (model_dir.parent / "checkpoints").exists()


@pytest.mark.timeout(900)
def test_lora_and_freeze_modes_train_and_save_plain_weights(make_config, dataset):
    from pipeline.model import loading

    for mode, extra in (("lora", {"lora_r": 4, "learning_rate": 5e-3}), ("freeze", {"trainable_top_layers": 1})):
        config = make_config(train={"max_steps": 4, "mode": mode, **extra})
        model_dir = stage("train", config, "--dataset", str(dataset), run_id=f"mode-{mode}")
        model = loading.load_model(str(model_dir))  # plain Hugging Face weights either way
        assert not any("lora_" in name for name, _ in model.named_parameters())
        run = next(r for r in train_runs(config) if r.data.tags["airflow.run_id"] == f"mode-{mode}")
        assert 0 < run.data.metrics["model/trainable_fraction"] < 1
        if mode == "lora":
            adapter = json.loads((model_dir / "adapter" / "adapter_config.json").read_text())
            assert adapter["r"] == 4 and adapter["peft_type"] == "LORA"


@pytest.mark.timeout(900)
def test_early_stopping_ends_a_diverging_run_and_keeps_the_best_checkpoint(make_config, dataset):
    # A learning rate of 0.5 makes the tiny model diverge: validation loss is best at the first checkpoint.
    config = make_config(train={"max_steps": 100, "checkpoint_steps": 5, "early_stopping_patience": 1,
                                "learning_rate": 0.5, "warmup_steps": 0})
    model_dir = stage("train", config, "--dataset", str(dataset), run_id="diverging")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["global_step"] < 100
    (run,) = train_runs(config)
    history = [m.value for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "val/loss")]
    assert len(history) >= 3  # one per checkpoint, and the final evaluation
    assert manifest["val_loss"] == pytest.approx(min(history[:-1]), rel=1e-4)  # the best model was reloaded


@pytest.mark.timeout(900)
def test_two_process_zero2_with_torchrun_logs_once_from_rank_zero(make_config, dataset):
    config = make_config(train={"max_steps": 4, "logging_steps": 2, "deepspeed": "configs/deepspeed/zero2.json"})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-port", str(free_port())]
    model_dir = stage("train", config, "--dataset", str(dataset), launcher=torchrun)
    assert json.loads((model_dir / "manifest.json").read_text())["global_step"] == 4
    (run,) = train_runs(config)  # rank 1 trained too, but only rank 0 talked to MLflow
    assert run.data.params["train.world_size"] == "2"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("where", ["local", "s3"])
def test_sigterm_saves_a_checkpoint_and_the_retry_resumes_from_it(make_config, dataset, tmp_path, where, request):
    steps = 300
    mirror = f"s3://{request.getfixturevalue('s3_server')()}/checkpoints" if where == "s3" else None
    config = make_config(train={"max_steps": steps, "checkpoint_steps": 10, "logging_steps": 50,
                                "checkpoint_mirror": mirror})
    checkpoint_root = tmp_path / "runs" / "manual" / "killed" / "train" / "checkpoints"
    args = [sys.executable, *command("train", config, "--dataset", str(dataset), run_id="killed")]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(checkpoint_root.glob("checkpoint-*/trainer_state.json")):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # what Airflow and Kubernetes send on timeout / eviction
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1 and "stopped by SIGTERM at step" in stderr, stderr[-2000:]
    saved = int(re.search(r"stopped by SIGTERM at step (\d+)", stderr).group(1))
    assert (checkpoint_root / f"checkpoint-{saved}" / "trainer_state.json").is_file()
    assert 10 <= saved < steps
    if where == "s3":  # the retry runs on a fresh machine: nothing local survives, the mirror does
        shutil.rmtree(tmp_path / "runs")

    model_dir = stage("train", config, "--dataset", str(dataset), run_id="killed")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["resumed_from"] == f"checkpoint-{saved}" and manifest["global_step"] == steps
    retry = [r for r in train_runs(config) if r.data.params.get("train.resumed_from", "none") != "none"]
    assert len(retry) == 1
    if where == "s3":
        import boto3

        bucket = mirror.split("/")[2]
        assert boto3.client("s3").list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0  # cleaned up on success
