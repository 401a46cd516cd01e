"""How training does its arithmetic (train.precision): fp32, bf16 autocast, or bf16 weights and optimizer state with
fp32 master weights.

    resolve("auto")                                   # "bf16" where the hardware has it, else "fp32"
    Trainer(..., optimizer_cls_and_kwargs=master_weight_optimizer(model, args))   # bf16_states: model cast to bf16

- `bf16` (autocast): fp32 weights, gradients and AdamW moments (2.16 GB at 135M parameters) plus a bf16 copy of
  every weight made each forward and kept for the backward (0.27 GB, and ~19% of a CPU step's time in casts).
- `bf16_states`: the model itself is bf16, so are its gradients and AdamW's moments; the optimizer keeps an fp32
  master copy of each weight and adds each step's update to it, so small updates are not rounded away (the weights
  the forward uses are the masters rounded to bf16). Weights + gradients + moments + masters: 1.62 GB, and no casts.
  This changes the numerics: the moments are rounded to bf16 (8 significant bits) each step, as in PyTorch
  Lightning's "bf16-true" or DeepSpeed's bf16 optimizer with bf16 states; an update itself is exact to bf16's
  precision before it reaches the fp32 master. The saved model is the bf16 weights.
  Hence opt-in, for short runs: a second moment in bf16 cannot shrink by AdamW's beta2 = 0.999 per step (a 0.1%
  change rounds back to the same bf16 value), so once gradients get smaller it stays at their old size and steps
  shrink. Measured with torch's fused AdamW on N(0, 1) gradients that drop to N(0, 0.3^2) at step 1000: bias-
  corrected v in bf16 / in fp32 = 1.003 at step 200, 1.06 at 1000, 2.3 at 2000 (steps ~1.5x too small).
"""

from __future__ import annotations

from pathlib import Path

import torch

PRECISIONS = ("auto", "bf16", "fp32", "bf16_states")


def resolve(precision: str) -> str:
    """The precision training runs in: `auto` is bf16 autocast where the hardware has bf16, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_supported() else "fp32"
    return precision


def bf16_supported() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:  # CPUs with AMX or AVX512-BF16 run bf16 autocast ~1.7x faster than fp32 (ENVIRONMENT.md)
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def bf16_weights(model: torch.nn.Module) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Cast the model's weights to bf16 in place; the trainable ones' fp32 tensors become the masters (not copied).
    Frozen weights (train.mode freeze or lora) are cast too, without a master: there is no autocast, so a frozen
    fp32 layer would meet the bf16 activations of the layers around it."""
    masters = {}
    for parameter in model.parameters():
        if not parameter.is_floating_point():
            continue
        if parameter.requires_grad:
            masters[parameter] = parameter.data
        parameter.data = parameter.data.to(torch.bfloat16)
    return masters


def master_weight_optimizer(model: torch.nn.Module, args) -> tuple[type, dict]:
    """bf16_states: the model cast to bf16 now, and the Trainer's optimizer (class, kwargs) holding its fp32 masters,
    with the TrainingArguments' AdamW settings."""
    return MasterWeightAdamW, {"masters": bf16_weights(model), "lr": args.learning_rate, "eps": args.adam_epsilon,
                               "betas": (args.adam_beta1, args.adam_beta2)}


class MasterWeightAdamW(torch.optim.AdamW):
    """torch's (fused where it can) AdamW on bf16 weights, moments in bf16, each update added to an fp32 master.

    Each step the fused kernel runs on a zero tensor in place of each weight, which leaves it holding exactly the
    update (-lr * m_hat / (sqrt(v_hat) + eps)); the update goes into the master, and the weight becomes the master
    rounded to bf16. Decoupled weight decay is applied to the master. The masters are part of state_dict, so a
    resumed run continues from the same fp32 weights.
    """

    def __init__(self, params, masters: dict[torch.nn.Parameter, torch.Tensor], **kwargs):
        super().__init__(params, **{"fused": True, **kwargs})  # the fused kernel: CPU and CUDA, torch >= 2.4
        self.masters = masters

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MasterWeightAdamW does not take a closure")
        weights, decays = {}, []
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                weights[parameter] = parameter.data
                parameter.data = torch.zeros_like(weights[parameter])  # the kernel writes the update here
                decays.append((parameter, 1 - group["lr"] * group["weight_decay"]))
        super().step()
        for parameter, decay in decays:
            master, weight = self.masters[parameter], weights[parameter]
            if master.device != weight.device:  # the Trainer moves the model to the GPU after building this optimizer
                master = self.masters[parameter] = master.to(weight.device)
            if decay != 1:
                master.mul_(decay)
            master.add_(parameter.data)
            weight.copy_(master)
            parameter.data = weight
        return None

    def state_dict(self):
        state = super().state_dict()
        state["master_weights"] = [self.masters[p] for group in self.param_groups for p in group["params"]]
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        saved = state_dict.pop("master_weights")
        parameters = [p for group in self.param_groups for p in group["params"]]
        if len(saved) != len(parameters):
            raise ValueError(f"optimizer checkpoint has {len(saved)} master weights for {len(parameters)} parameters")
        super().load_state_dict(state_dict)
        with torch.no_grad():
            for parameter, master in zip(parameters, saved, strict=True):
                self.masters[parameter].copy_(master)
                parameter.data.copy_(master)

