"""Training reports: real tokens/s, model TFLOP/s and MFU, peak memory, padding waste and the Trainer's logs to
MLflow; step / total, loss and ETA to the console. Callbacks of the train stage's Trainer (pipeline/train.py),
rank 0 only."""

from __future__ import annotations

import resource
import time

import mlflow
import torch
from transformers import TrainerCallback

from pipeline.process import progress
from pipeline.training import throughput
from pipeline.training.samples import batching


class StepMetrics(TrainerCallback):
    """Send Trainer logs (loss, learning rate, grad norm, val loss) to MLflow, with real tokens/s, the model TFLOP/s
    they take (pipeline/training/throughput.py), MFU where the device's peak is known, peak memory and padding waste."""

    def __init__(self, collator: batching.Collator, flops_per_token: float, peak_flops: float | None):
        self.collator, self.flops_per_token, self.peak_flops = collator, flops_per_token, peak_flops
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
            metrics.update({"train/tokens_per_second": rate, "train/padding_waste": self.collator.padding_waste,
                            "train/model_tflops_per_second": rate * self.flops_per_token / 1e12,
                            **peak_memory()})
            if self.peak_flops:
                metrics["train/mfu"] = throughput.mfu(rate, self.flops_per_token, self.peak_flops, args.world_size)
        self.last = (now, tokens)
        mlflow.log_metrics(metrics, step=state.global_step)

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = (time.perf_counter(), self.collator.real_tokens)


def peak_memory() -> dict[str, float]:
    """This rank's peaks so far: the process's resident memory, and the GPU memory torch allocated where it has one."""
    peaks = {"train/peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}  # Linux: KiB
    if torch.cuda.is_available():
        peaks["train/peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return peaks


class StepProgress(TrainerCallback):
    """Step / total, loss and ETA for the console (pipeline/process/progress.py), rank 0 only, at most every 2 s."""

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
