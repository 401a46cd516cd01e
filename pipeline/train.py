"""Stage 3, train: fine-tune the base chat model on the validated partition with transformers' Trainer.

    python -m pipeline train --config configs/embedded.yaml --run-date 2026-11-22 --dataset data/conversations/dt=2026-11-22
    python -m pipeline train ... --set train.mode=lora                                # full | lora | freeze
    python -m pipeline train ... --set train.deepspeed=configs/deepspeed/zero2.json   # DeepSpeed, one process
    torchrun --nproc-per-node 2 -m pipeline train ... --set train.deepspeed=...      # N processes, same command

Loss is on assistant tokens only (see chat_data). Conversations are packed into rows of max_seq_length tokens
(batching.py) or length-grouped and padded per batch. Checkpoints go to the run's train directory; a retried or
SIGTERM-ed task resumes from the last one. Only rank 0 logs to MLflow and writes the model, in Hugging Face format,
to the run's `train/model` directory, which is printed for the next task.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import torch
import transformers
from datasets import Dataset
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

from pipeline import (
    batching,
    chat_data,
    checkpoints,
    distributed,
    models,
    partitions,
    progress,
    storage,
    tracking,
    tuning,
)
from pipeline.config import ProjectConfig, RunContext, as_params

log = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """Stopped by SIGTERM after saving a checkpoint; the next attempt resumes from it."""


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = field(default=300, metadata={"help": "Optimizer steps; the nightly budget, not epochs."})
    batch_size: int = field(default=8, metadata={
        "help": "Per device per step: packed rows of max_seq_length tokens, or conversations without packing."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak AdamW learning rate."})
    warmup_steps: int = field(default=20, metadata={"help": "Linear warm-up steps before the linear decay."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_seq_length: int = field(default=256, metadata={"help": "Tokens per conversation and per packed row."})
    packing: bool = field(default=True, metadata={
        "help": "Pack conversations into rows (no cross-attention); False = length-grouped dynamic padding."})
    drop_replyless: bool = field(default=False, metadata={
        "help": "A conversation whose every reply is cut off by max_seq_length fails the run; True drops it."})
    precision: str = field(default="auto", metadata={"help": "auto | bf16 | fp32. bf16 = autocast, fp32 master."})
    mode: str = field(default="full", metadata={"help": "full | lora | freeze (all but trainable_top_layers)."})
    trainable_top_layers: int = field(default=4, metadata={"help": "freeze mode: decoder layers left trainable."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: str = field(default="all-linear", metadata={
        "help": "'all-linear' or comma-separated module names (q_proj,v_proj)."})
    system_prompt: str | None = field(default=None, metadata={"help": "None keeps the template's own default."})
    deepspeed: str | None = field(default=None, metadata={"help": "Path to a DeepSpeed JSON config, or None."})
    checkpoint_mirror: str | None = field(default=None, metadata={
        "help": "s3://bucket/prefix: also keep checkpoints there (per DAG run), so a retry elsewhere resumes."})
    checkpoint_steps: int | None = field(default=None, metadata={
        "help": "Save a checkpoint and measure validation loss every N steps (resume, early stopping, best model)."})
    early_stopping_patience: int | None = field(default=None, metadata={
        "help": "Stop after N checkpoints without a better validation loss; needs checkpoint_steps."})
    keep_checkpoints: bool = field(default=False, metadata={"help": "Keep checkpoints after a successful run."})
    logging_steps: int = field(default=10, metadata={"help": "Log loss / lr / grad norm / tokens/s every N steps."})
    max_eval_conversations: int = field(default=200, metadata={"help": "Validation conversations for val loss."})
    seed: int = field(default=42, metadata={"help": "Seed for data order and initialisation; logged."})

    def __post_init__(self):
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.mode not in tuning.MODES:
            raise ValueError(f"mode must be one of {tuning.MODES}, got {self.mode!r}")
        if self.deepspeed is not None:
            if not Path(self.deepspeed).is_file():
                raise ValueError(f"deepspeed config {self.deepspeed!r} does not exist")
            stage = json.loads(Path(self.deepspeed).read_text()).get("zero_optimization", {}).get("stage", 0)
            if self.mode == "lora" and stage == 3:
                raise ValueError("mode lora with ZeRO-3 is not supported (the adapter merge needs whole weights); "
                                 "use a ZeRO-2 config")
        if self.checkpoint_mirror is not None and not self.checkpoint_mirror.startswith("s3://"):
            raise ValueError(f"checkpoint_mirror must be an s3://bucket/prefix URI, got {self.checkpoint_mirror!r}")
        if self.early_stopping_patience is not None and self.checkpoint_steps is None:
            raise ValueError("early_stopping_patience needs checkpoint_steps (validation runs at each checkpoint)")


def run(config: TrainConfig, project: ProjectConfig, ctx: RunContext, dataset: str) -> Path:
    set_seed(config.seed)
    main = distributed.is_main_process()
    with tracking.stage_run(project, ctx, "train", enabled=main):
        partition = partitions.read(dataset)  # refuses bytes other than those validate approved
        manifest, turns = partition.manifest, partition.turns
        tokenizer = models.load_tokenizer(project.base_model)
        train_set, train_stats = build_dataset(turns, "train", tokenizer, config)
        val_set, val_stats = build_dataset(turns, "validation", tokenizer, config, limit=config.max_eval_conversations)
        model = tuning.prepare(models.load_model(project.base_model), config)
        # No KV cache while training: with one, transformers skips the packed-sequence mask (and wastes memory).
        model.config.use_cache = False
        output = storage.run_dir(project, ctx, "train")
        trainer, collator = make_trainer(model, tokenizer, train_set, val_set, config, output / "checkpoints")
        stopper = checkpoints.StopOnSigterm()
        trainer.add_callback(stopper)
        mirror = checkpoints.mirror_uri(config.checkpoint_mirror, output)
        if main:
            checkpoints.prepare(output / "checkpoints", mirror, {
                "config": as_params(config, "train"), "data_digest": manifest["digest"],
                "base_model": project.base_model, "world_size": distributed.world_size()})
        for callback in checkpoints.callbacks(mirror):  # seal each checkpoint, then upload it
            trainer.add_callback(callback)
        trainer.accelerator.wait_for_everyone()  # rank 0 may just have restored or cleared checkpoints
        resume = checkpoints.latest_complete(output / "checkpoints")
        if main:
            mlflow.log_params({**as_params(config, "train"), "train.base_model": project.base_model,
                               "train.world_size": distributed.world_size(),
                               "train.resolved_precision": "bf16" if trainer.args.bf16 else "fp32",
                               "train.resumed_from": resume.name if resume else "none"})
            mlflow.log_metrics({**train_stats, **val_stats, **tuning.parameter_counts(model)})
            tracking.log_dataset(partition.path, manifest, context="training")
        if resume:
            log.info("resuming from %s", resume)
        stopper.install()
        with checkpoints.explain_full_disk(output / "checkpoints"):  # ENOSPC: say where, and what is intact
            result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        if stopper.stopped_at is not None:
            raise TrainingInterrupted(f"stopped by SIGTERM at step {stopper.stopped_at} of {config.max_steps}; "
                                      f"checkpoint saved in {output / 'checkpoints'}; a rerun resumes from it")
        val_loss = trainer.evaluate()["eval_loss"]
        summary = {"train_loss": result.training_loss, "val_loss": val_loss, "global_step": result.global_step,
                   "padding_waste": collator.padding_waste, "resumed_from": resume.name if resume else None}
        model_dir = save(trainer, tokenizer, config, project, manifest, output / "model", summary)
        if main:
            tracking.log_to_parent({"train/loss": result.training_loss, "val/loss": val_loss})
            mlflow.log_metric("train/padding_waste_total", collator.padding_waste)
            if not config.keep_checkpoints:
                shutil.rmtree(output / "checkpoints", ignore_errors=True)
                if mirror:
                    checkpoints.forget(mirror)
    distributed.finish()
    return model_dir


def build_dataset(turns, split, tokenizer, config: TrainConfig, limit: int | None = None) -> tuple[Dataset, dict]:
    samples, replyless = [], []
    for cid, _, messages in chat_data.conversations(turns, split)[:limit]:
        encoded = chat_data.tokenize_conversation(tokenizer, messages, config.max_seq_length, config.system_prompt)
        if encoded is None:  # truncation removed every assistant token: nothing to learn from
            replyless.append(cid)
            continue
        samples.append({**encoded, "conversation_ids": [cid]})
    if replyless and not config.drop_replyless:
        raise ValueError(
            f"split {split!r}: {len(replyless)} conversation(s) lose every assistant reply when cut to "
            f"max_seq_length={config.max_seq_length} tokens, e.g. {replyless[:5]}; raise train.max_seq_length or "
            "set train.drop_replyless=true to skip them (they are counted in MLflow)")
    if not samples:
        raise ValueError(f"split {split!r}: no conversation has an assistant turn within {config.max_seq_length} tokens")
    tokens = sum(len(s["input_ids"]) for s in samples)
    rows = batching.pack(samples, config.max_seq_length) if config.packing else samples
    stats = {f"data/{split}_conversations": len(samples), f"data/{split}_dropped_replyless": len(replyless),
             f"data/{split}_tokens": tokens, f"data/{split}_rows": len(rows)}
    return Dataset.from_list(rows), stats


def make_trainer(model, tokenizer, train_set, val_set, config: TrainConfig, output_dir: Path):
    if config.deepspeed:
        distributed.single_process_env()
    bf16 = config.precision == "bf16" or (config.precision == "auto" and _bf16_supported())
    every = config.checkpoint_steps
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
        # Without CUDA say so: accelerate then sets up gloo and counts processes right (it counts 1 under DeepSpeed).
        use_cpu=not torch.cuda.is_available(),
        bf16=bf16,  # autocast; master weights and optimizer state stay fp32
        # Packed rows are all ~max_seq_length long; unpacked conversations are grouped by length to cut padding.
        train_sampling_strategy="random" if config.packing else "group_by_length",
        logging_steps=config.logging_steps,
        save_strategy="steps" if every else "no",
        save_steps=every or 500,
        # The newest (to resume) and the best (to keep). With a limit of 1 the Trainer deletes the newest when
        # training ends and it is not the best, which would lose the checkpoint a SIGTERM just saved.
        save_total_limit=2,
        eval_strategy="steps" if every else "no",
        eval_steps=every,
        load_best_model_at_end=bool(every),
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        report_to="none",  # MLflow logging is ours (StepMetrics), into the stage's child run, rank 0 only
        disable_tqdm=True,
        deepspeed=config.deepspeed,
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,  # the collator needs conversation_ids for its error messages
    )
    collator = batching.Collator(tokenizer.pad_token_id, packed=config.packing)
    callbacks = [StepMetrics(collator), StepProgress()]
    if config.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = ChatTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=val_set,
                          data_collator=collator, callbacks=callbacks,
                          eval_collator=batching.Collator(tokenizer.pad_token_id, packed=config.packing))
    trainer.remove_callback(transformers.PrinterCallback)  # its raw log dicts: StepProgress prints step/total, loss and ETA
    return trainer, collator


class ChatTrainer(Trainer):
    """Trainer whose validation batches go through their own collator, so token counts measure training only."""

    def __init__(self, *args, eval_collator, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_collator = eval_collator

    def get_eval_dataloader(self, eval_dataset=None):
        train_collator, self.data_collator = self.data_collator, self.eval_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator


def save(trainer, tokenizer, config, project, manifest, final: Path, summary: dict) -> Path:
    """Rank 0 writes the model atomically; other ranks still take part (ZeRO-3 gathers weights across ranks)."""
    if not trainer.is_world_process_zero():
        with tempfile.TemporaryDirectory() as nowhere:
            if config.mode != "lora":
                trainer.save_model(nowhere)
        return final
    eot = models.end_of_turn_id(tokenizer)
    with storage.atomic_dir(final) as scratch:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if config.mode == "lora":
            model = tuning.merge_lora(model, scratch / "adapter")
        model.generation_config.eos_token_id = eot  # generation stops at the end of the assistant turn
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.config.use_cache = True  # for generation downstream
        if config.mode == "lora":
            model.save_pretrained(str(scratch))
        else:
            trainer.save_model(str(scratch))  # under DeepSpeed this gathers the weights from the engine
        tokenizer.save_pretrained(str(scratch))
        storage.write_json(scratch / "train_config.json", as_params(config, "train"))
        storage.write_json(scratch / storage.MANIFEST, {
            "base_model": project.base_model, "data_digest": manifest["digest"],
            "data_partition": manifest["partition_date"], "mode": config.mode, **summary,
        })
    mlflow.log_artifact(str(final / "train_config.json"))
    if config.mode == "lora":
        mlflow.log_artifacts(str(final / "adapter"), "adapter")
    if config.deepspeed:
        mlflow.log_artifact(config.deepspeed)
    return final


class StepMetrics(TrainerCallback):
    """Send Trainer logs (loss, learning rate, grad norm, val loss) plus real tokens/s and padding waste to MLflow."""

    def __init__(self, collator: batching.Collator):
        self.collator = collator
        self.last = None  # (time, real tokens) at the previous log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        renamed = {"loss": "train/loss_step", "eval_loss": "val/loss", "learning_rate": "train/learning_rate",
                   "grad_norm": "train/grad_norm", "train_runtime": "train/runtime_s",
                   "train_samples_per_second": "train/samples_per_second"}
        metrics = {renamed[k]: float(v) for k, v in logs.items() if k in renamed and v is not None}
        now, tokens = time.perf_counter(), self.collator.real_tokens
        if self.last is not None and now > self.last[0] and tokens > self.last[1]:
            # Non-pad tokens; every rank sees batches of the same shape, so the world rate is rank 0's x world size.
            rate = (tokens - self.last[1]) / (now - self.last[0]) * args.world_size
            metrics.update({"train/tokens_per_second": rate, "train/padding_waste": self.collator.padding_waste})
        self.last = (now, tokens)
        mlflow.log_metrics(metrics, step=state.global_step)

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = (time.perf_counter(), self.collator.real_tokens)


class StepProgress(TrainerCallback):
    """Step / total, loss and ETA for the console (pipeline/progress.py), rank 0 only, at most every 2 s."""

    EVERY_S = 2.0  # a GPU runs many steps a second; the console needs a line every few seconds at most

    def __init__(self):
        self.began, self.first_step, self.loss, self.last_emit = 0.0, 0, None, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        # ETA from this attempt's own pace: a resumed run starts at the checkpoint's step, not 0.
        self.began, self.first_step = time.perf_counter(), state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        # On a logging step the Trainer calls on_log next, with the fresh loss: that one reports the step.
        every = getattr(state, "logging_steps", None) or args.logging_steps
        if args.logging_strategy != "steps" or state.global_step % max(int(every), 1):
            self._report(state, force=state.global_step >= state.max_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])
            self._report(state, force=True)

    def _report(self, state, force: bool) -> None:
        now, step = time.perf_counter(), state.global_step
        if not state.is_world_process_zero or (now - self.last_emit < self.EVERY_S and not force):
            return
        done = step - self.first_step
        eta = (state.max_steps - step) * (now - self.began) / done if done > 0 else None
        progress.training_step(step, state.max_steps, eta, self.loss)
        self.last_emit = now


def _bf16_supported() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:  # CPUs with AMX or AVX512-BF16 run bf16 autocast ~1.7x faster than fp32 (ENVIRONMENT.md)
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
