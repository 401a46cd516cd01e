"""Less memory kept between forward and backward under bf16 autocast, same arithmetic: Linear and RMSNorm layers.

    lean_layers.apply(model)        # once; training forwards under autocast use them, everything else is unchanged

What the stock layers keep for the backward (SmolLM2-135M, 512 tokens, measured with saved-tensor hooks):
- autocast's bf16 copy of every Linear weight, ~200 MB: the weights themselves stay fp32, so each forward makes a
  bf16 copy and the backward needs it. Here the copy is made again in the backward (a cast: memory-bound, ~3% of a
  step) and only the fp32 weight, resident anyway, is referenced.
- q, k and v each cast the same normalised activations to bf16 and keep their own copy (gate and up likewise),
  ~50 MB: here the RMSNorm makes that cast once and the three keep the one copy (their gradients still add up in
  fp32 on the norm's fp32 output, as with separate casts).
- RMSNorm's fp32 input and normalised output, ~140 MB: here only its input, which the residual stream holds anyway;
  the backward recomputes the norm (pointwise work) under activation checkpointing.
The arithmetic is the stock layers': the same casts in the same order, grad @ W and grad^T @ x in bf16 then cast to
fp32 as autocast's cast nodes do, and the RMSNorm's own autograd on the recomputation. Loss and every gradient are
bitwise those of the stock layers (tests/unit/test_lean_layers.py).
Outside training autocast (evaluation, generation, fp32, DeepSpeed's bf16 weights) the stock forwards run.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# RMSNorms computed as LlamaRMSNorm does: weight * (x * rsqrt(mean(x^2) + eps)).to(input dtype)
RMS_NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"}


def apply(model: torch.nn.Module) -> int:
    """Switch the model's Linear and Llama-style RMSNorm layers to the lean forwards; returns how many."""
    switched = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.forward = types.MethodType(_linear_forward, module)
            switched += 1
        elif type(module).__name__ in RMS_NORMS and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_rms_norm_forward, module)
            switched += 1
    return switched


def _training_autocast_dtype(tensor: torch.Tensor) -> torch.dtype | None:
    device = tensor.device.type
    if not torch.is_grad_enabled() or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


def _linear_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    dtype = _training_autocast_dtype(x)
    if dtype is None or self.weight.dtype == dtype or not self.weight.is_floating_point():
        return torch.nn.Linear.forward(self, x)
    return _RecastLinear.apply(x, self.weight, self.bias, dtype, getattr(x, "lean_cast", None))


def _rms_norm_forward(self, x: torch.Tensor) -> torch.Tensor:
    dtype = _training_autocast_dtype(x)
    if dtype is None:
        return type(self).forward(self, x)
    # Recomputed in the backward from its input alone: the stock forward and its own autograd, so the same gradients.
    normed = checkpoint(type(self).forward, self, x, use_reentrant=False)
    normed.lean_cast = normed.detach().to(dtype)  # the cast each Linear after it would make, made once and shared
    return normed


class _RecastLinear(torch.autograd.Function):
    """F.linear under autocast, keeping the fp32 weight (not its bf16 copy) for the backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, dtype, cast=None):
        low = x.to(dtype) if cast is None else cast  # the cast autocast would make (no copy if x is bf16 already)
        ctx.save_for_backward(low, weight)
        ctx.dtype, ctx.x_dtype = dtype, x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(low, weight.to(dtype), None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, grad):
        low, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad.matmul(weight.to(ctx.dtype)).to(ctx.x_dtype)
        flat = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_weight = flat.t().matmul(low.reshape(-1, low.shape[-1])).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_bias = flat.sum(0).to(ctx.bias_dtype)
        return grad_x, grad_weight, grad_bias, None, None
