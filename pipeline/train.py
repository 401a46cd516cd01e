"""Stage 3, train: fine-tune the base chat model on the validated partition with transformers' Trainer.

    python -m pipeline train --config configs/embedded.yaml --run-date 2026-11-22 --dataset data/conversations/dt=2026-11-22
    python -m pipeline train ... --set train.mode=lora                                # full | lora | freeze
    python -m pipeline train ... --set train.deepspeed=configs/deepspeed/zero2.json   # DeepSpeed, one process
    torchrun --nproc-per-node 2 -m pipeline train ... --set train.deepspeed=...      # N processes, same command

Loss is on assistant tokens only (see chat_format), computed without the full logits (losses.py). Conversations
are packed into rows of max_seq_length tokens (batching.py) or length-grouped and padded per batch. Checkpoints go
to the run's train directory; a retried or SIGTERM-ed task resumes from the last one. Only rank 0 logs to MLflow and
writes the model, in Hugging Face format, to the run's `train/model` directory, which is printed for the next task.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
import torch
import transformers
from datasets import Dataset
from transformers import EarlyStoppingCallback, TrainingArguments, set_seed

from pipeline.config import ProjectConfig, RunContext, as_params
from pipeline.data import partitions
from pipeline.model import loading, template_check
from pipeline.process import failpoints
from pipeline.storage import outputs
from pipeline.tracking import runs
from pipeline.training import checkpoints, distributed, lean_layers, losses, precision, throughput, trainable
from pipeline.training import start_weights as start
from pipeline.training.replay import draw as draw_replay
from pipeline.training.reporting import StepMetrics, StepProgress
from pipeline.training.samples import batching, tokenization, windows
from pipeline.training.trainer import ChatTrainer

log = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """Stopped by SIGTERM after saving a checkpoint; the next attempt resumes from it."""


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = field(default=300, metadata={"help": "Optimizer steps; the nightly budget, not epochs."})
    init: str = field(default="base", metadata={
        "help": "base | champion | lineage: the weights a night starts from; champion carries earlier nights "
                "forward, lineage also the nights rejected only for a gain within noise (training/start_weights.py; "
                "base while there is neither; unfetchable weights fail the task)."})
    replay: float = field(default=0.0, metadata={
        "help": "Also train on this many earlier train conversations per one of tonight's (0.5: half as many again), "
                "drawn seeded from the partitions of the replay_days before (training/replay.py); 0: tonight's only."})
    replay_days: int = field(default=30, metadata={"help": "How many days back replay draws from."})
    replay_static_share: float = field(default=0.5, metadata={"help": "Share of the replay drawn from replay "
                                       "sources (a static set), the rest from earlier nights (training/replay.py)."})
    batch_size: int = field(default=8, metadata={
        "help": "Per device per step: packed rows of max_seq_length tokens, or conversations without packing."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak AdamW learning rate."})
    warmup_steps: int = field(default=20, metadata={"help": "Linear warm-up steps before the linear decay."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_seq_length: int = field(default=256, metadata={"help": "Tokens per conversation and per packed row."})
    packing: bool = field(default=True, metadata={
        "help": "Pack conversations into rows (no cross-attention); False = length-grouped dynamic padding."})
    windows: bool = field(default=True, metadata={"help": "A conversation longer than max_seq_length becomes windows "
                                                          "at turn boundaries, each reply in one (samples/windows.py)."})
    drop_replyless: bool = field(default=False, metadata={
        "help": "A conversation whose every reply is cut off by max_seq_length fails the run; True drops it."})
    precision: str = field(default="auto", metadata={
        "help": "auto | bf16 | fp32 | bf16_states. bf16 = autocast, fp32 weights and AdamW moments; bf16_states = bf16 "
                "weights, gradients and moments, fp32 master weights in the optimizer (precision.py: 0.5 GB less at "
                "135M parameters, moments rounded to bf16, which stop them decaying: for runs of a few hundred steps). "
                "auto = bf16 where the hardware has it, else fp32."})
    chunked_loss: bool = field(default=True, metadata={
        "help": "Output head + loss in chunks of labelled positions, never the full logits (losses.py): less memory "
                "and time, same loss. Off under ZeRO-3 (it partitions the head)."})
    lean_layers: bool = field(default=False, metadata={
        "help": "bf16 autocast: Linear layers keep their fp32 weights, not bf16 copies, for the backward and RMSNorms "
                "only their input (lean_layers.py): 0.28 GB less at 135M parameters, bitwise the same gradients, "
                "7-9% slower on a 2-core CPU (the weights are cast again in the backward)."})
    activation_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute each layer's activations in the backward: ~1/3 more compute, far less activation memory."})
    mode: str = field(default="full", metadata={"help": "full | lora | freeze (all but trainable_top_layers)."})
    trainable_top_layers: int = field(default=4, metadata={"help": "freeze mode: decoder layers left trainable."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: str = field(default="all-linear", metadata={"help": "'all-linear' or names: q_proj,v_proj."})
    system_prompt: str | None = field(default=None, metadata={"help": "None keeps the template's own default."})
    deepspeed: str | None = field(default=None, metadata={"help": "Path to a DeepSpeed JSON config, or None."})
    checkpoint_mirror: str | None = field(default=None, metadata={
        "help": "s3://bucket/prefix: also keep checkpoints there (per DAG run), so a retry elsewhere resumes."})
    checkpoint_steps: int | None = field(default=None, metadata={
        "help": "Save a checkpoint and measure validation loss every N steps (resume, early stopping, best model)."})
    early_stopping_patience: int | None = field(default=None, metadata={
        "help": "Stop after N checkpoints without a better validation loss; needs checkpoint_steps."})
    keep_checkpoints: bool = field(default=False, metadata={"help": "Keep checkpoints after a successful run."})
    logging_steps: int = field(default=10, metadata={"help": "Log loss, lr, grad norm, tokens/s, MFU, memory every N."})
    peak_tflops: float | None = field(default=None, metadata={
        "help": "One device's peak bf16 TFLOP/s, for train/mfu; None: known for H100, H200, A100 (throughput.py)."})
    max_eval_conversations: int = field(default=200, metadata={"help": "Validation conversations for val loss."})
    seed: int = field(default=42, metadata={"help": "Seed for data order and initialisation; logged."})

    def __post_init__(self):
        precision.resolve(self.precision)  # refuses an unknown one, naming the choices
        if self.precision == "bf16_states" and (self.deepspeed or self.lean_layers):
            raise ValueError("precision bf16_states brings its own optimizer and no autocast: not with deepspeed "
                             "(use its config's bf16 section) nor lean_layers (an autocast saving)")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise ValueError(f"peak_tflops must be a positive number of TFLOP/s, got {self.peak_tflops!r}")
        if not (0 <= self.replay <= 10 and self.replay_days >= 1 and 0 <= self.replay_static_share <= 1):
            raise ValueError(f"replay in [0, 10], replay_days >= 1, replay_static_share in [0, 1]: got {self.replay}, "
                             f"{self.replay_days}, {self.replay_static_share}")
        if self.init not in start.INITS:
            raise ValueError(f"init must be one of {start.INITS}, got {self.init!r}")
        if self.mode not in trainable.MODES:
            raise ValueError(f"mode must be one of {trainable.MODES}, got {self.mode!r}")
        if self.deepspeed is not None:
            if not Path(self.deepspeed).is_file():
                raise ValueError(f"deepspeed config {self.deepspeed!r} does not exist")
            if self.mode == "lora" and zero_stage(self) == 3:
                raise ValueError("mode lora with ZeRO-3 is not supported (the adapter merge needs whole weights); "
                                 "use a ZeRO-2 config")
        if self.checkpoint_mirror is not None and not self.checkpoint_mirror.startswith("s3://"):
            raise ValueError(f"checkpoint_mirror must be an s3://bucket/prefix URI, got {self.checkpoint_mirror!r}")
        if self.early_stopping_patience is not None and self.checkpoint_steps is None:
            raise ValueError("early_stopping_patience needs checkpoint_steps (validation runs at each checkpoint)")


def run(config: TrainConfig, project: ProjectConfig, ctx: RunContext, dataset: str) -> Path:
    """Every rank trains; rank 0 alone restores checkpoints, talks to MLflow and cleans up (the _rank0_ steps)."""
    set_seed(config.seed)
    main = distributed.is_main_process()
    with runs.stage_run(project, ctx, "train", enabled=main):
        partition = partitions.read(dataset)  # refuses bytes other than those validate approved
        tokenizer = loading.load_tokenizer(project.base_model)
        template_check.check(tokenizer, config.system_prompt)  # a template it cannot use stops it here, named
        replayed, replay_counts = draw_replay(partition.turns, project, ctx.run_date, config.replay, config.replay_days,
                                              config.seed, config.replay_static_share)
        train_set, train_stats = build_dataset(pd.concat([partition.turns, replayed]), "train", tokenizer, config)
        val_set, val_stats = build_dataset(partition.turns, "validation", tokenizer, config,
                                           limit=config.max_eval_conversations)
        weights, origin = start.resolve(config.init, project, ctx.run_date)  # base, champion or lineage weights
        model = trainable.prepare(loading.load_model(weights), config)
        output = outputs.run_dir(project, ctx, "train")
        trainer, collator = make_trainer(model, tokenizer, train_set, val_set, config, output / "checkpoints")
        mirror = checkpoints.mirror_uri(config.checkpoint_mirror, output)
        if main:
            _rank0_prepare_checkpoints(config, origin, partition.manifest, output / "checkpoints", mirror)
        stopper, resume = attach_checkpoints(trainer, output / "checkpoints", mirror)  # after rank 0's restore
        if main:
            _rank0_log_inputs(config, project, origin, trainer, partition, resume,
                              {**train_stats, **val_stats, **replay_counts})
        result, val_loss = train_and_validate(trainer, config, stopper, resume, output / "checkpoints")
        summary = {"train_loss": result.training_loss, "val_loss": val_loss, "global_step": result.global_step,
                   "padding_waste": collator.padding_waste, "resumed_from": resume.name if resume else None,
                   "init_from": origin}
        model_dir = save(trainer, tokenizer, config, project, partition.manifest, output / "model", summary)
        if main:
            _rank0_log_results_and_clean_up(config, summary, output / "checkpoints", mirror)
    distributed.finish()
    return model_dir


def _rank0_prepare_checkpoints(config, origin: str, manifest, checkpoint_dir: Path, mirror: str | None) -> None:
    """Restore the mirror's checkpoints, or clear ones that belong to another config, data, start or world size."""
    checkpoints.prepare(checkpoint_dir, mirror, {
        "config": as_params(config, "train"), "data_digest": manifest["digest"],
        "base_model": origin, "world_size": distributed.world_size()})


def attach_checkpoints(trainer, checkpoint_dir: Path, mirror: str | None):
    """All ranks: stop on SIGTERM with a checkpoint, seal (and upload) each checkpoint; the one to resume from."""
    stopper = checkpoints.StopOnSigterm()
    trainer.add_callback(stopper)
    for callback in checkpoints.callbacks(mirror):  # seal each checkpoint, then upload it
        trainer.add_callback(callback)
    trainer.accelerator.wait_for_everyone()  # rank 0 may just have restored or cleared checkpoints
    resume = checkpoints.latest_complete(checkpoint_dir)
    if resume:
        log.info("resuming from %s", resume)
    return stopper, resume


def _rank0_log_inputs(config, project, origin: str, trainer, partition, resume, data_stats: dict) -> None:
    mlflow.log_params({**as_params(config, "train"), "train.base_model": project.base_model, "train.init_from": origin,
                       "train.world_size": distributed.world_size(),
                       "train.resolved_precision": trainer.precision,
                       "train.resolved_chunked_loss": trainer.chunked_loss,
                       "train.resumed_from": resume.name if resume else "none"})
    mlflow.log_metrics({**data_stats, **trainable.parameter_counts(trainer.model)})
    runs.log_dataset(partition.path, partition.manifest, context="training")


def train_and_validate(trainer, config, stopper, resume, checkpoint_dir: Path):
    """All ranks: train (resuming), then the validation loss; a SIGTERM ends here, after its checkpoint."""
    stopper.install()
    with checkpoints.explain_full_disk(checkpoint_dir):  # ENOSPC: say where, and what is intact
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if stopper.stopped_at is not None:
        raise TrainingInterrupted(f"stopped by SIGTERM at step {stopper.stopped_at} of {config.max_steps}; "
                                  f"checkpoint saved in {checkpoint_dir}; a rerun resumes from it")
    failpoints.hit("train.trained")  # training over, checkpoint sealed (tests send SIGTERM here)
    return result, trainer.evaluate()["eval_loss"]


def _rank0_log_results_and_clean_up(config, summary: dict, checkpoint_dir: Path, mirror: str | None) -> None:
    runs.log_to_parent({"train/loss": summary["train_loss"], "val/loss": summary["val_loss"]})
    mlflow.log_metric("train/padding_waste_total", summary["padding_waste"])
    if not config.keep_checkpoints:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        if mirror:
            checkpoints.forget(mirror)


def build_dataset(turns, split, tokenizer, config: TrainConfig, limit: int | None = None) -> tuple[Dataset, dict]:
    """Tokenized (and packed) samples of a split, in batches, from the chat template's layout where it allows
    (pipeline/training/samples/tokenization.py; equal to chat_format.tokenize_conversation's)."""
    turns, windowed = (windows.split_long(turns, split, tokenizer, config.max_seq_length, config.system_prompt)
                       if config.windows else (turns, {}))
    tokenized = tokenization.tokenize_split(turns, split, tokenizer, config.max_seq_length, config.system_prompt,
                                            limit=limit)
    replyless = tokenized.replyless
    if replyless and not config.drop_replyless:
        raise ValueError(
            f"split {split!r}: {len(replyless)} conversation(s) lose every assistant reply when cut to "
            f"max_seq_length={config.max_seq_length} tokens, e.g. {replyless[:5]}; raise train.max_seq_length or "
            "set train.drop_replyless=true to skip them (they are counted in MLflow)")
    if not tokenized.conversation_ids:
        raise ValueError(f"split {split!r}: no conversation has an assistant turn within {config.max_seq_length} tokens")
    dataset = tokenization.to_dataset(tokenized, config.max_seq_length if config.packing else None, consume=True)
    stats = {f"data/{split}_conversations": len(tokenized.conversation_ids),
             f"data/{split}_dropped_replyless": len(replyless), f"data/{split}_tokens": tokenized.tokens,
             f"data/{split}_rows": len(dataset), f"data/{split}_rendered": tokenized.rendered, **windowed}
    return dataset, stats


def make_trainer(model, tokenizer, train_set, val_set, config: TrainConfig, output_dir: Path):
    if config.deepspeed:
        distributed.single_process_env()
    # No KV cache while training: with one, transformers skips the packed-sequence mask (and wastes memory).
    model.config.use_cache = False
    chunked_loss = _add_chunked_loss(model, config)  # before the Trainer: it reads the forward's signature
    if config.lean_layers:
        lean_layers.apply(model)
    resolved = precision.resolve(config.precision)
    every = config.checkpoint_steps
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps, weight_decay=config.weight_decay, lr_scheduler_type="linear",
        # Without CUDA say so: accelerate then sets up gloo and counts processes right (it counts 1 under DeepSpeed).
        use_cpu=not torch.cuda.is_available(),
        bf16=resolved == "bf16",  # autocast; master weights and optimizer state stay fp32
        activation_checkpointing=config.activation_checkpointing,
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
        metric_for_best_model="eval_loss", greater_is_better=False,
        report_to="none",  # MLflow logging is ours (StepMetrics), into the stage's child run, rank 0 only
        disable_tqdm=True,
        deepspeed=config.deepspeed,
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,  # the collator needs conversation_ids for its error messages
    )
    collator = batching.Collator(tokenizer.pad_token_id, packed=config.packing)
    peak = config.peak_tflops * 1e12 if config.peak_tflops else throughput.peak_flops(throughput.device_name())
    flops = throughput.training_flops_per_token(model, config.max_seq_length)
    callbacks = [StepMetrics(collator, flops, peak), StepProgress()]
    if config.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    optimizer = precision.master_weight_optimizer(model, args) if resolved == "bf16_states" else None
    trainer = ChatTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=val_set,
                          data_collator=collator, callbacks=callbacks, chunked_loss=chunked_loss,
                          optimizer_cls_and_kwargs=optimizer, precision=resolved,
                          eval_collator=batching.Collator(tokenizer.pad_token_id, packed=config.packing))
    trainer.remove_callback(transformers.PrinterCallback)  # its raw log dicts: StepProgress prints step/total, loss and ETA
    return trainer, collator


def _add_chunked_loss(model, config: TrainConfig) -> bool:
    if not config.chunked_loss:
        return False
    plain = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a LoRA wrapper
    if zero_stage(config) == 3 or not losses.supports_chunked_loss(plain):
        log.warning("train.chunked_loss: not possible with %s%s; the stock loss (full logits) is used",
                    type(plain).__name__, " under ZeRO-3" if zero_stage(config) == 3 else "")
        return False
    losses.add_chunked_loss(plain)
    return True


def zero_stage(config: TrainConfig) -> int:
    if config.deepspeed is None:
        return 0
    return json.loads(Path(config.deepspeed).read_text()).get("zero_optimization", {}).get("stage", 0)


def save(trainer, tokenizer, config, project, manifest, final: Path, summary: dict) -> Path:
    """Rank 0 writes the model atomically; other ranks still take part (ZeRO-3 gathers weights across ranks)."""
    if not trainer.is_world_process_zero():
        with tempfile.TemporaryDirectory() as nowhere:
            if config.mode != "lora":
                trainer.save_model(nowhere)
        return final
    eot = loading.end_of_turn_id(tokenizer)
    with outputs.atomic_dir(final) as scratch:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if config.mode == "lora":
            model = trainable.merge_lora(model, scratch / "adapter")
        model.generation_config.eos_token_id = eot  # generation stops at the end of the assistant turn
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.config.use_cache = True  # for generation downstream
        if config.mode == "lora":
            model.save_pretrained(str(scratch))
        else:
            trainer.save_model(str(scratch))  # under DeepSpeed this gathers the weights from the engine
        tokenizer.save_pretrained(str(scratch))
        outputs.write_json(scratch / outputs.TRAIN_CONFIG, as_params(config, "train"))
        outputs.write_json(scratch / outputs.MANIFEST, {
            "base_model": project.base_model, "data_digest": manifest["digest"],
            "data_partition": manifest["partition_date"], "mode": config.mode, **summary,
        })
    mlflow.log_artifact(str(final / outputs.TRAIN_CONFIG))
    if config.mode == "lora":
        mlflow.log_artifacts(str(final / "adapter"), "adapter")
    if config.deepspeed:
        mlflow.log_artifact(config.deepspeed)
    return final

