"""Which parameters train: all of them (full), LoRA adapters (peft), or only the top k decoder layers (freeze).

Freeze mode trains the top k decoder blocks and the final norm; embeddings stay frozen (SmolLM2 ties them to the
output head, so unfreezing one would unfreeze both). LoRA adapters are merged into the weights for evaluation and
serving; the adapter itself is saved beside the merged model.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import PreTrainedModel

MODES = ("full", "lora", "freeze")


def prepare(model: PreTrainedModel, config) -> nn.Module:
    if config.mode == "lora":
        from peft import LoraConfig, get_peft_model

        targets = config.lora_target_modules
        lora = LoraConfig(
            task_type="CAUSAL_LM", r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
        )
        return get_peft_model(model, lora)
    if config.mode == "freeze":
        freeze_all_but_top(model, config.trainable_top_layers)
    return model


def freeze_all_but_top(model: PreTrainedModel, k: int) -> None:
    prefix, count = decoder_layers(model)
    if not 1 <= k <= count:
        raise ValueError(f"trainable_top_layers must be between 1 and {count} (the model's layers), got {k}")
    trainable_prefixes = tuple(f"{prefix}.{i}." for i in range(count - k, count))
    embeddings = {id(p) for module in (model.get_input_embeddings(), model.get_output_embeddings())
                  if module is not None for p in module.parameters()}
    for name, param in model.named_parameters():
        in_a_layer = name.startswith(prefix + ".")
        param.requires_grad = name.startswith(trainable_prefixes) or (not in_a_layer and id(param) not in embeddings)


def decoder_layers(model: PreTrainedModel) -> tuple[str, int]:
    """Qualified name and length of the model's stack of decoder blocks (model.layers, transformer.h, ...)."""
    expected = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == expected:
            return name, expected
    raise ValueError(f"{type(model).__name__}: no list of {expected} decoder layers found; cannot freeze by layer")


def parameter_counts(model: nn.Module) -> dict[str, float]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"model/parameters": total, "model/trainable_parameters": trainable,
            "model/trainable_fraction": trainable / total if total else 0.0}


def merge_lora(model: nn.Module, adapter_dir: Path) -> PreTrainedModel:
    """Save the adapter (its adapter_config.json names the base model), then return plain merged weights."""
    model.save_pretrained(str(adapter_dir))
    return model.merge_and_unload()
