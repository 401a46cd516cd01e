"""The causal-LM loss without the (tokens x vocabulary) logits: the output head and cross-entropy run in chunks of
labelled positions only, each chunk under activation checkpointing.

SmolLM2's head has a 49,152-token vocabulary: the stock loss builds logits for every position of the batch (bf16
under autocast, then an fp32 copy, its log-softmax and their gradients, ~10 bytes x 49,152 per position, kept from
the forward to the backward), although only assistant tokens have labels. Here the head sees only positions whose
next token is labelled, and a chunk's logits live only while that chunk is computed (the backward recomputes them).
Same loss, same gradients (tests/unit/test_losses.py); less memory and less head arithmetic. TRL 1.16 does the same
(trl.trainer.utils.add_fused_lm_head), but on a CPU it scores every position in fp32.

    add_chunked_loss(model)                            # once, before the Trainer wraps the model
    model(**batch, chunked_loss=True).loss             # what ChatTrainer.compute_loss calls
"""

from __future__ import annotations

import functools
import types

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import CausalLMOutputWithPast

from pipeline.model import output_head
from pipeline.model.chat_format import IGNORE_INDEX

# Labelled positions per chunk: 256 x 49,152 logits are ~50 MB in fp32, and the matrix products stay large enough
# to run at full speed on a CPU.
CHUNK_TOKENS = 256


def supports_chunked_loss(model: torch.nn.Module) -> bool:
    """A plain linear head on a decoder whose output it reads directly (no logit scaling or soft-capping)."""
    return output_head.is_plain_projection(model)


def add_chunked_loss(model: torch.nn.Module) -> None:
    """Let `model(..., labels=..., chunked_loss=True)` return the loss without logits; other calls are unchanged.

    The forward is replaced on the instance, so the call still goes through whatever wraps the model later
    (DDP, DeepSpeed ZeRO-1/2, PEFT), which is what keeps their gradient hooks working.
    """
    if not supports_chunked_loss(model):
        raise ValueError(f"{type(model).__name__}: chunked loss needs a plain linear output head without logit "
                         "scaling; set train.chunked_loss=false for this model")
    original = model.forward

    @functools.wraps(type(model).forward)  # keeps the signature: Trainer inspects it for **kwargs (loss kwargs)
    def forward(self, *args, chunked_loss=False, labels=None, num_items_in_batch=None, **kwargs):
        if not chunked_loss or labels is None:
            if labels is not None:
                kwargs["labels"] = labels
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return original(*args, **kwargs)
        kwargs["use_cache"] = False
        hidden = getattr(self, self.base_model_prefix)(*args, **kwargs).last_hidden_state
        head = self.get_output_embeddings()
        return CausalLMOutputWithPast(loss=causal_lm_loss(hidden, head.weight, head.bias, labels, num_items_in_batch))

    model.forward = types.MethodType(forward, model)


def causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                   num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """transformers' ForCausalLMLoss on `hidden @ weight.T (+ bias)`: position t predicts labels[t + 1]; mean over
    labelled positions, or their sum / num_items_in_batch when the Trainer counts them across micro-batches."""
    targets = labels[:, 1:]
    labelled = targets != IGNORE_INDEX
    states, targets = hidden[:, :-1][labelled], targets[labelled]
    if targets.numel() == 0:
        return hidden.float().sum() * 0.0  # nothing to learn, but still a loss the backward can run through
    total = 0.0
    for start in range(0, targets.numel(), CHUNK_TOKENS):
        chunk = (states[start:start + CHUNK_TOKENS], weight, bias, targets[start:start + CHUNK_TOKENS])
        if torch.is_grad_enabled():
            # The backward recomputes this chunk's logits instead of keeping them (autocast state included).
            total = total + checkpoint(_summed_cross_entropy, *chunk, use_reentrant=False)
        else:
            total = total + _summed_cross_entropy(*chunk)
    return total / (targets.numel() if num_items_in_batch is None else num_items_in_batch)


def _summed_cross_entropy(states, weight, bias, targets) -> torch.Tensor:
    logits = F.linear(states, weight, bias).float()  # the head in the autocast dtype; the softmax in fp32
    return F.cross_entropy(logits, targets, reduction="sum")
