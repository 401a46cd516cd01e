"""Fine-tuning modes: which parameters train, and a merged LoRA model computing what the adapter computed."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline.train import TrainConfig
from pipeline.training import trainable


@pytest.fixture
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def trainable_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_freeze_trains_only_the_top_layers_and_the_final_norm(model):
    trainable.prepare(model, TrainConfig(mode="freeze", trainable_top_layers=1))
    names = trainable_names(model)
    assert names and all(n.startswith("model.layers.1.") or n == "model.norm.weight" for n in names)
    assert "model.norm.weight" in names
    assert not any("embed" in n or n.startswith("model.layers.0.") for n in names)


def test_freeze_rejects_more_layers_than_the_model_has(model):
    with pytest.raises(ValueError, match="between 1 and 2"):
        trainable.prepare(model, TrainConfig(mode="freeze", trainable_top_layers=3))


def test_lora_trains_only_adapters_and_merges_to_the_same_function(model, tmp_path):
    peft_model = trainable.prepare(model, TrainConfig(mode="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0))
    names = trainable_names(peft_model)
    assert names and all("lora_" in n for n in names)
    counts = trainable.parameter_counts(peft_model)
    assert 0 < counts["model/trainable_fraction"] < 0.2
    with torch.no_grad():  # a trained adapter: B is zero at init, which would make the check vacuous
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    ids = torch.tensor([[3, 17, 250, 9, 41]])
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        merged = trainable.merge_lora(peft_model, tmp_path / "adapter")
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_lora_with_zero3_is_rejected_with_a_reason(tmp_path):
    ds = tmp_path / "z3.json"
    ds.write_text('{"zero_optimization": {"stage": 3}}')
    with pytest.raises(ValueError, match="ZeRO-3"):
        TrainConfig(mode="lora", deepspeed=str(ds))
