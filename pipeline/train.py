"""Stage 3, train: fine-tune the base chat model on the validated partition with transformers' Trainer.

    python -m pipeline train --config configs/embedded.yaml --run-date 2026-11-22 --dataset data/conversations/dt=2026-11-22
    python -m pipeline train ... --set train.deepspeed=configs/deepspeed/zero2.json   # DeepSpeed, one process

Loss is on assistant tokens only (see chat_data). Batches are grouped by length and padded per batch. The model is
saved in Hugging Face format to the run's `train/model` directory, which is printed for the next task.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from pipeline import chat_data, models, storage, tracking
from pipeline.config import ProjectConfig, RunContext, as_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = field(default=300, metadata={"help": "Optimizer steps; the nightly budget, not epochs."})
    batch_size: int = field(default=8, metadata={"help": "Conversations per device per step."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak AdamW learning rate (full fine-tune)."})
    warmup_steps: int = field(default=20, metadata={"help": "Linear warm-up steps before the linear decay."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_seq_length: int = field(default=256, metadata={"help": "Tokens per conversation; longer ones are cut."})
    precision: str = field(default="auto", metadata={"help": "auto | bf16 | fp32. bf16 = autocast, fp32 master."})
    system_prompt: str | None = field(default=None, metadata={"help": "None keeps the template's own default."})
    deepspeed: str | None = field(default=None, metadata={"help": "Path to a DeepSpeed JSON config, or None."})
    logging_steps: int = field(default=10, metadata={"help": "Log loss / lr / grad norm every N steps."})
    max_eval_conversations: int = field(default=200, metadata={"help": "Validation conversations for val loss."})
    seed: int = field(default=42, metadata={"help": "Seed for data order and initialisation; logged."})

    def __post_init__(self):
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.deepspeed is not None and not Path(self.deepspeed).is_file():
            raise ValueError(f"deepspeed config {self.deepspeed!r} does not exist")


def run(config: TrainConfig, project: ProjectConfig, ctx: RunContext, dataset: str) -> Path:
    set_seed(config.seed)
    with tracking.stage_run(project, ctx, "train"):
        mlflow.log_params({**as_params(config, "train"), "train.base_model": project.base_model})
        manifest = storage.read_manifest(dataset)
        turns = pd.read_parquet(Path(dataset) / "turns.parquet")
        tokenizer = models.load_tokenizer(project.base_model)
        train_set = build_dataset(turns, "train", tokenizer, config)
        val_set = build_dataset(turns, "validation", tokenizer, config, limit=config.max_eval_conversations)
        model = models.load_model(project.base_model)
        output = storage.run_dir(project, ctx, "train")
        trainer = make_trainer(model, tokenizer, train_set, val_set, config, output / "trainer")
        result = trainer.train()
        val_loss = trainer.evaluate()["eval_loss"]
        model_dir = save(trainer, tokenizer, config, project, manifest, output / "model", result, val_loss)
        tracking.log_to_parent({"train/loss": result.training_loss, "val/loss": val_loss})
    return model_dir


def build_dataset(turns, split, tokenizer, config: TrainConfig, limit: int | None = None) -> Dataset:
    rows, dropped = [], 0
    for _, _, messages in chat_data.conversations(turns, split)[:limit]:
        encoded = chat_data.tokenize_conversation(tokenizer, messages, config.max_seq_length, config.system_prompt)
        if encoded is None:  # truncation removed every assistant token: nothing to learn from
            dropped += 1
            continue
        rows.append(encoded)
    if not rows:
        raise ValueError(f"split {split!r}: no conversation has an assistant turn within {config.max_seq_length} tokens")
    mlflow.log_metrics({f"data/{split}_conversations": len(rows), f"data/{split}_dropped_truncated": dropped,
                        f"data/{split}_tokens": sum(len(r["input_ids"]) for r in rows)})
    return Dataset.from_list(rows)


def make_trainer(model, tokenizer, train_set, val_set, config: TrainConfig, output_dir: Path) -> Trainer:
    if config.deepspeed:
        _single_process_distributed_env()
    bf16 = config.precision == "bf16" or (config.precision == "auto" and _bf16_supported())
    mlflow.log_param("train.resolved_precision", "bf16" if bf16 else "fp32")
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        lr_scheduler_type="linear",
        bf16=bf16,
        train_sampling_strategy="group_by_length",  # similar lengths per batch: little padding
        logging_steps=config.logging_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",  # MLflow logging is ours (StepMetrics), into the stage's child run
        disable_tqdm=True,
        deepspeed=config.deepspeed,
        seed=config.seed,
        dataloader_num_workers=0,
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=lambda features: chat_data.pad_batch(features, tokenizer.pad_token_id),
        callbacks=[StepMetrics()],
    )


def save(trainer, tokenizer, config, project, manifest, final: Path, result, val_loss) -> Path:
    eot = models.end_of_turn_id(tokenizer)
    trainer.model.generation_config.eos_token_id = eot  # generation stops at the end of the assistant turn
    trainer.model.generation_config.pad_token_id = tokenizer.pad_token_id
    with storage.atomic_dir(final) as scratch:
        trainer.save_model(str(scratch))
        tokenizer.save_pretrained(str(scratch))
        storage.write_json(scratch / "train_config.json", as_params(config, "train"))
        storage.write_json(scratch / storage.MANIFEST, {
            "base_model": project.base_model, "data_digest": manifest["digest"],
            "data_partition": manifest["partition_date"], "train_loss": result.training_loss,
            "val_loss": val_loss, "global_step": result.global_step,
        })
    mlflow.log_artifact(str(final / "train_config.json"))
    if config.deepspeed:
        mlflow.log_artifact(config.deepspeed)
    return final


class StepMetrics(TrainerCallback):
    """Send Trainer logs (loss, learning rate, grad norm, val loss, throughput) to the active MLflow run."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        renamed = {"loss": "train/loss_step", "eval_loss": "val/loss", "learning_rate": "train/learning_rate",
                   "grad_norm": "train/grad_norm", "train_runtime": "train/runtime_s",
                   "train_samples_per_second": "train/samples_per_second"}
        metrics = {renamed[k]: float(v) for k, v in logs.items() if k in renamed and v is not None}
        mlflow.log_metrics(metrics, step=state.global_step)


def _bf16_supported() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:  # CPUs with AMX or AVX512-BF16 run bf16 autocast ~1.7x faster than fp32 (ENVIRONMENT.md)
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _single_process_distributed_env() -> None:
    """DeepSpeed needs a process group even for one process; without these it tries MPI discovery."""
    if "RANK" in os.environ:
        return  # launched by torchrun / deepspeed: they set everything
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
