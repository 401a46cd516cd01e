"""The train stage's transformers Trainer: its own collator for validation batches, the chunked loss, and gradient
clipping that scales the gradients only when their norm is over the limit, inside the fused optimizer's kernel.

    trainer = ChatTrainer(model=..., args=..., eval_collator=..., chunked_loss=True, precision="bf16", ...)
"""

from __future__ import annotations

import torch
from accelerate.utils import DistributedType
from transformers import Trainer


class ChatTrainer(Trainer):
    """Validation batches go through their own collator, so token counts measure training only; with chunked_loss
    the loss never builds the full logits (losses.py; no compute_metrics needs them)."""

    def __init__(self, *args, eval_collator, chunked_loss: bool, precision: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_collator, self.chunked_loss, self.precision = eval_collator, chunked_loss, precision

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.chunked_loss:
            inputs = {**inputs, "chunked_loss": True}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def get_eval_dataloader(self, eval_dataset=None):
        train_collator, self.data_collator = self.data_collator, self.eval_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def _clip_grad_norm(self, model):
        """torch's clip_grad_norm_ multiplies every gradient by the clip coefficient, even when that is 1: a pass
        over all gradients each step (6% of a SmolLM2 step on a 2-core CPU; bf16 gradients take twice as long as
        fp32 ones). Here nothing is scaled under the limit; over it, a fused torch optimizer divides each gradient by
        1 / coefficient inside its own kernel (its grad_scale input, which AMP's GradScaler uses: the pass is not
        made at all, and the gradients hold the clipped values after the step); other optimizers get the gradients
        scaled by torch's expression. DeepSpeed and FSDP clip their own way."""
        if self.accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            return super()._clip_grad_norm(model)
        parameters = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters], foreach=True)
        coefficient = self.args.max_grad_norm / (norm + 1e-6)  # clip_grad_norm_'s, before its clamp to 1
        optimizer = fused_optimizer(self.optimizer)
        if optimizer is not None:
            optimizer.grad_scale = (1 / coefficient).float() if coefficient < 1 else None  # read by the next step
        elif coefficient < 1:
            torch.nn.utils.clip_grads_with_norm_(parameters, self.args.max_grad_norm, norm, foreach=True)
        return norm


def fused_optimizer(optimizer) -> torch.optim.Optimizer | None:
    """The torch optimizer under accelerate's wrapper if it runs the fused kernel (which takes grad_scale), else None."""
    inner = getattr(optimizer, "optimizer", optimizer)
    fused = isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)) and inner.defaults.get("fused")
    return inner if fused else None
