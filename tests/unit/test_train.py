"""The train stage's Trainer: the console gets step / total, ETA and loss as progress events (rank 0 only); the
chunked loss (losses.py) trains exactly like the stock one."""

import json

import pytest
from datasets import Dataset

from pipeline import batching, chat_data, chat_trainer, models, progress, train


def test_trainer_reports_steps_with_eta_and_loss(tiny_model_dir, tmp_path, monkeypatch):
    path = tmp_path / "progress.jsonl"
    monkeypatch.setenv(progress.ENV, str(path))
    monkeypatch.setattr(train.StepProgress, "EVERY_S", 0.0)  # every step, not every 2 s
    monkeypatch.setattr(progress, "_stage", "train")  # as `python -m pipeline train` sets it
    config = train.TrainConfig(max_steps=4, batch_size=2, logging_steps=2, max_seq_length=64, precision="fp32",
                               warmup_steps=0)
    trainer = tiny_trainer(tiny_model_dir, config, tmp_path / "out")
    trainer.remove_callback(train.StepMetrics)  # MLflow logging is not under test (no active run here)
    trainer.train()
    steps = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(s["event"], s["step"], s["total"]) for s in steps] == [("step", i, 4) for i in (1, 2, 3, 4)]
    assert all(s["eta_s"] is not None for s in steps) and steps[-1]["eta_s"] == 0
    assert steps[0]["loss"] is None and steps[1]["loss"] > 0  # the loss arrives with the first logging step
    assert progress.line(steps[1]).startswith("[train] step 2/4  loss ")


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "activation-checkpointing"])
def test_chunked_loss_trains_step_by_step_like_the_stock_loss(tiny_model_dir, tmp_path, checkpointing):
    def train_losses(chunked: bool):
        config = train.TrainConfig(max_steps=3, batch_size=2, logging_steps=1, max_seq_length=64, precision="fp32",
                                   warmup_steps=0, chunked_loss=chunked, activation_checkpointing=checkpointing)
        trainer = tiny_trainer(tiny_model_dir, config, tmp_path / str(chunked))
        trainer.remove_callback(train.StepMetrics)
        trainer.train()
        assert trainer.model.is_activation_checkpointing == checkpointing
        # as trained: accelerate's wrapper around the fused AdamW that gradient clipping hands its coefficient to
        assert type(trainer.optimizer).__name__ == "AcceleratedOptimizer"
        assert chat_trainer.fused_optimizer(trainer.optimizer) is trainer.optimizer.optimizer
        logs = [entry for entry in trainer.state.log_history if "loss" in entry]
        return trainer.chunked_loss, [(e["loss"], e["grad_norm"]) for e in logs]

    (chunked, with_chunks), (stock, without) = train_losses(True), train_losses(False)
    assert chunked and not stock and len(with_chunks) == 3
    for (loss, grad_norm), (expected_loss, expected_norm) in zip(with_chunks, without, strict=True):
        assert loss == pytest.approx(expected_loss, rel=1e-4) and grad_norm == pytest.approx(expected_norm, rel=1e-3)


def tiny_trainer(model_dir, config: train.TrainConfig, output):
    tokenizer = models.load_tokenizer(str(model_dir))
    samples = [{**chat_data.tokenize_conversation(tokenizer, [{"role": "user", "content": f"hello {i}"},
                                                              {"role": "assistant", "content": "hi there"}], 64),
                "conversation_ids": [str(i)]} for i in range(8)]
    trainer, _ = train.make_trainer(models.load_model(str(model_dir)), tokenizer,
                                    Dataset.from_list(batching.pack(samples, 64)), None, config, output)
    return trainer


@pytest.mark.parametrize("scale", [1e-4, 1e2], ids=["under-the-limit", "over-the-limit"])
def test_gradient_clipping_gives_torchs_gradients_bitwise(tiny_model_dir, tmp_path, scale):
    """With no fused optimizer to hand the coefficient to (none is made yet here), ChatTrainer skips
    clip_grad_norm_'s multiply by 1 (a pass over every gradient), and only that."""
    import torch

    config = train.TrainConfig(max_steps=1, batch_size=2, max_seq_length=64, precision="fp32")
    trainer = tiny_trainer(tiny_model_dir, config, tmp_path / "out")
    parameters = list(trainer.model.parameters())
    generator = torch.Generator().manual_seed(0)
    for parameter in parameters:
        parameter.grad = torch.randn(parameter.shape, generator=generator) * scale
    twins = [torch.nn.Parameter(p.detach().clone()) for p in parameters]
    for twin, parameter in zip(twins, parameters, strict=True):
        twin.grad = parameter.grad.clone()
    expected_norm = torch.nn.utils.clip_grad_norm_(twins, trainer.args.max_grad_norm)
    norm = trainer._clip_grad_norm(trainer.model)
    assert torch.equal(norm, expected_norm) and (expected_norm > trainer.args.max_grad_norm) == (scale > 1)
    assert all(torch.equal(p.grad, t.grad) for p, t in zip(parameters, twins, strict=True))


@pytest.mark.parametrize("precision", ["fp32", "bf16_states"])
@pytest.mark.parametrize("scale", [1e-4, 1e2], ids=["under-the-limit", "over-the-limit"])
def test_a_fused_optimizer_clips_inside_its_step_like_torch(tiny_model_dir, tmp_path, precision, scale):
    """Over the limit, the fused AdamW divides by 1 / clip coefficient in its kernel instead of a separate pass over
    the gradients: the step lands where torch's clip_grad_norm_ + step lands, and leaves the clipped gradients."""
    import torch

    def one_step(clip_with_torch: bool):
        config = train.TrainConfig(max_steps=1, batch_size=2, max_seq_length=64, precision=precision)
        trainer = tiny_trainer(tiny_model_dir, config, tmp_path / str(clip_with_torch))
        trainer.create_optimizer()
        parameters = [p for p in trainer.model.parameters() if p.requires_grad]
        generator = torch.Generator().manual_seed(0)
        for parameter in parameters:
            parameter.grad = (torch.randn(parameter.shape, generator=generator) * scale).to(parameter.dtype)
        if clip_with_torch:
            norm = torch.nn.utils.clip_grad_norm_(parameters, trainer.args.max_grad_norm)
        else:
            norm = trainer._clip_grad_norm(trainer.model)
            assert chat_trainer.fused_optimizer(trainer.optimizer) is not None  # the kernel path is the one tested
        trainer.optimizer.step()
        weights = getattr(trainer.optimizer, "masters", {p: p for p in parameters})  # bf16_states: the fp32 masters
        state = trainer.optimizer.state  # Adam's step is nearly scale-free: its moments show the clipping
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
