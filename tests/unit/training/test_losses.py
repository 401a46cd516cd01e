"""The chunked causal-LM loss (pipeline/training/losses.py) against transformers' own loss: same value, same gradients."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from pipeline.model.chat_format import IGNORE_INDEX
from pipeline.training import losses


def tiny_llama(seed=0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, use_cache=False)
    return LlamaForCausalLM(config)


def packed_batch(vocab=300, rows=2, width=24) -> dict:
    """Two packed rows of conversations (position ids restart), labels on some positions only, as batching.py."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab, (rows, width), generator=generator)
    labels = torch.where(torch.rand(rows, width, generator=generator) < 0.4, input_ids, IGNORE_INDEX)
    position_ids = torch.cat([torch.arange(10), torch.arange(width - 10)]).repeat(rows, 1)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def loss_and_grads(model, batch, **flags):
    model.zero_grad(set_to_none=True)
    loss = model(**batch, **flags).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("num_items_in_batch", [None, 50], ids=["mean", "sum-over-accumulated-batch"])
def test_chunked_loss_and_gradients_equal_the_stock_loss(monkeypatch, num_items_in_batch):
    monkeypatch.setattr(losses, "CHUNK_TOKENS", 5)  # several chunks, the last one partial
    model, batch = tiny_llama(), packed_batch()
    extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
    stock_loss, stock_grads = loss_and_grads(model, batch, **extra)
    losses.add_chunked_loss(model)
    chunked_loss, chunked_grads = loss_and_grads(model, batch, chunked_loss=True, **extra)
    assert (batch["labels"][:, 1:] != IGNORE_INDEX).sum() > 3 * losses.CHUNK_TOKENS
    torch.testing.assert_close(chunked_loss, stock_loss, rtol=1e-5, atol=1e-6)
    assert chunked_grads.keys() == stock_grads.keys()
    for name, grad in stock_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert model(**batch).logits.shape[-1] == 300  # without the flag: the stock forward, logits and all


def test_chunked_loss_under_bf16_autocast_stays_close_to_the_stock_loss():
    model, batch = tiny_llama(), packed_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stock = model(**batch).loss.float()
        losses.add_chunked_loss(model)
        chunked = model(**batch, chunked_loss=True).loss.float()
    torch.testing.assert_close(chunked, stock, rtol=2e-2, atol=2e-2)


def test_a_batch_without_labels_gives_zero_and_a_usable_backward():
    model, batch = tiny_llama(), packed_batch()
    batch["labels"][:] = IGNORE_INDEX
    losses.add_chunked_loss(model)
    loss = model(**batch, chunked_loss=True).loss
    loss.backward()
    assert loss.item() == 0.0 and all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_gpt2_heads_work_too_and_a_scaled_head_is_refused_by_name():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=32, n_layer=1, n_head=2, bos_token_id=0,
                                      eos_token_id=0, use_cache=False)).eval()  # eval: no dropout
    batch = packed_batch()
    stock = gpt2(**batch).loss
    losses.add_chunked_loss(gpt2)
    torch.testing.assert_close(gpt2(**batch, chunked_loss=True).loss, stock, rtol=1e-5, atol=1e-6)
    scaled = tiny_llama()
    scaled.config.logit_scale = 0.5
    with pytest.raises(ValueError, match="LlamaForCausalLM.*train.chunked_loss=false"):
        losses.add_chunked_loss(scaled)
