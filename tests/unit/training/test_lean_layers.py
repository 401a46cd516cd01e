"""Lean Linear and RMSNorm layers (pipeline/training/lean_layers.py) against the stock ones under bf16 autocast: bitwise the
same loss and gradients, fewer bytes kept for the backward, and the stock forwards everywhere else."""

import copy

import pytest
import torch
from test_losses import packed_batch, tiny_llama

from pipeline.training import lean_layers, losses


def bf16_loss_and_grads(model, batch, **flags):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch, **flags).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def saved_bytes(model, batch) -> int:
    """Bytes of the distinct tensors autograd keeps from the forward for the backward, parameters (resident
    anyway) left out."""
    seen = {}

    def keep(tensor):
        if not (tensor.is_leaf and tensor.requires_grad):
            seen[(tensor.untyped_storage().data_ptr(), tensor.dtype)] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(**batch)
    return sum(seen.values())


@pytest.mark.parametrize("chunked", [False, True], ids=["stock-loss", "chunked-loss"])
def test_same_loss_and_gradients_bit_for_bit(chunked, monkeypatch):
    monkeypatch.setattr(losses, "CHUNK_TOKENS", 5)
    stock, batch = tiny_llama(), packed_batch()
    lean = copy.deepcopy(stock)
    assert lean_layers.apply(lean) == 2 * 7 + 2 * 2 + 1 + 1  # 7 Linears and 2 norms per layer, final norm, head
    flags = {}
    if chunked:
        losses.add_chunked_loss(stock)
        losses.add_chunked_loss(lean)
        flags = {"chunked_loss": True}
    stock_loss, stock_grads = bf16_loss_and_grads(stock, batch, **flags)
    lean_loss, lean_grads = bf16_loss_and_grads(lean, batch, **flags)
    assert torch.equal(stock_loss, lean_loss)
    assert stock_grads.keys() == lean_grads.keys()
    for name, grad in stock_grads.items():
        assert torch.equal(grad, lean_grads[name]), name


def test_keeps_no_bf16_weight_copies_for_the_backward():
    stock, batch = tiny_llama(), packed_batch()
    lean = copy.deepcopy(stock)
    lean_layers.apply(lean)
    linear_weights = sum(m.weight.numel() for m in stock.modules() if type(m) is torch.nn.Linear)
    # autocast keeps a bf16 copy (2 bytes a weight) of every Linear weight; the lean layers keep none
    assert saved_bytes(stock, batch) - saved_bytes(lean, batch) >= 2 * linear_weights


def test_stock_forward_outside_training_autocast():
    stock, batch = tiny_llama(), packed_batch()
    lean = copy.deepcopy(stock)
    lean_layers.apply(lean)
    with torch.no_grad():  # evaluation and generation
        assert torch.equal(stock(**batch).logits, lean(**batch).logits)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(stock(**batch).logits, lean(**batch).logits)
    stock_loss, lean_loss = stock(**batch).loss, lean(**batch).loss  # fp32 training
    stock_loss.backward()
    lean_loss.backward()
    assert torch.equal(stock_loss, lean_loss)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(stock.parameters(), lean.parameters(), strict=True))
