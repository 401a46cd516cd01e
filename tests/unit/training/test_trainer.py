"""ChatTrainer's gradient clipping: the gradients torch's clip_grad_norm_ gives, bitwise, also when a fused
optimizer scales them inside its step."""


import pytest
from tiny_model import tiny_trainer

from pipeline import train
from pipeline.training import trainer


@pytest.mark.parametrize("scale", [1e-4, 1e2], ids=["under-the-limit", "over-the-limit"])
def test_gradient_clipping_gives_torchs_gradients_bitwise(tiny_model_dir, tmp_path, scale):
    """With no fused optimizer to hand the coefficient to (none is made yet here), ChatTrainer skips
    clip_grad_norm_'s multiply by 1 (a pass over every gradient), and only that."""
    import torch

    config = train.TrainConfig(max_steps=1, batch_size=2, max_seq_length=64, precision="fp32")
    tiny = tiny_trainer(tiny_model_dir, config, tmp_path / "out")
    parameters = list(tiny.model.parameters())
    generator = torch.Generator().manual_seed(0)
    for parameter in parameters:
        parameter.grad = torch.randn(parameter.shape, generator=generator) * scale
    twins = [torch.nn.Parameter(p.detach().clone()) for p in parameters]
    for twin, parameter in zip(twins, parameters, strict=True):
        twin.grad = parameter.grad.clone()
    expected_norm = torch.nn.utils.clip_grad_norm_(twins, tiny.args.max_grad_norm)
    norm = tiny._clip_grad_norm(tiny.model)
    assert torch.equal(norm, expected_norm) and (expected_norm > tiny.args.max_grad_norm) == (scale > 1)
    assert all(torch.equal(p.grad, t.grad) for p, t in zip(parameters, twins, strict=True))


@pytest.mark.parametrize("precision", ["fp32", "bf16_states"])
@pytest.mark.parametrize("scale", [1e-4, 1e2], ids=["under-the-limit", "over-the-limit"])
def test_a_fused_optimizer_clips_inside_its_step_like_torch(tiny_model_dir, tmp_path, precision, scale):
    """Over the limit, the fused AdamW divides by 1 / clip coefficient in its kernel instead of a separate pass over
    the gradients: the step lands where torch's clip_grad_norm_ + step lands, and leaves the clipped gradients."""
    import torch

    def one_step(clip_with_torch: bool):
        config = train.TrainConfig(max_steps=1, batch_size=2, max_seq_length=64, precision=precision)
        tiny = tiny_trainer(tiny_model_dir, config, tmp_path / str(clip_with_torch))
        tiny.create_optimizer()
        parameters = [p for p in tiny.model.parameters() if p.requires_grad]
        generator = torch.Generator().manual_seed(0)
        for parameter in parameters:
            parameter.grad = (torch.randn(parameter.shape, generator=generator) * scale).to(parameter.dtype)
        if clip_with_torch:
            norm = torch.nn.utils.clip_grad_norm_(parameters, tiny.args.max_grad_norm)
        else:
            norm = tiny._clip_grad_norm(tiny.model)
            assert trainer.fused_optimizer(tiny.optimizer) is not None  # the kernel path is the one tested
        tiny.optimizer.step()
        weights = getattr(tiny.optimizer, "masters", {p: p for p in parameters})  # bf16_states: the fp32 masters
        state = tiny.optimizer.state  # Adam's step is nearly scale-free: its moments show the clipping
        return norm, {"weight": [weights[p].detach().clone() for p in parameters],
                      "gradient": [p.grad.float() for p in parameters],
                      "moment": [state[p]["exp_avg"].float() for p in parameters]}

    (norm, ours), (torch_norm, theirs) = one_step(False), one_step(True)
    assert torch.equal(norm, torch_norm) and (norm > 1) == (scale > 1)
    # fp32: the same to float rounding; bf16_states: gradients and moments to bf16's (1 part in 256)
    rtol = 1e-5 if precision == "fp32" else 2 ** -7
    for kind in ours:
        for mine, torchs in zip(ours[kind], theirs[kind], strict=True):
            torch.testing.assert_close(mine, torchs, rtol=rtol, atol=1e-9, msg=lambda m, kind=kind: f"{kind}: {m}")
