"""MFU's pieces (pipeline/training/throughput.py): FLOPs per token from the model, the device's peak, the ratio."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.training import throughput


def tiny(tied: bool) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied))


@pytest.mark.parametrize("tied", [True, False])
def test_flops_per_token_count_a_tied_head_once(tied):
    model = tiny(tied)
    embedding = 100 * 16
    layer = 16 * 16 * 2 + 16 * 8 * 2 + 16 * 32 * 3 + 16 * 2  # q, o; k, v (one kv head of 8); gate, up, down; norms
    parameters = embedding * (1 if tied else 2) + 2 * layer + 16  # + the final norm
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert throughput.training_flops_per_token(model, 64) == 6 * parameters + 12 * 2 * 16 * 64


def test_peaks_come_from_the_device_name_and_only_for_known_parts():
    assert throughput.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert throughput.peak_flops("NVIDIA H200") == 989e12
    assert throughput.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert throughput.peak_flops("NVIDIA L4") is None and throughput.peak_flops("cpu") is None


def test_mfu_is_model_flops_over_every_devices_peak():
    assert throughput.mfu(1000.0, 1e9, 4e12, devices=1) == pytest.approx(0.25)
    assert throughput.mfu(2000.0, 1e9, 4e12, devices=2) == pytest.approx(0.25)  # twice the tokens on twice the GPUs
