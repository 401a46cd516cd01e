"""train.precision=bf16_states: bf16 weights and moments with fp32 masters follow fp32 AdamW to bf16's precision,
keep updates too small for bf16 weights, decay the masters, and resume from a checkpoint to the same weights."""

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from pipeline import train
from pipeline.model import chat_format, loading
from pipeline.training import precision
from pipeline.training.samples import batching

STEPS = 30


def gradients(shape, steps: int = STEPS) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=generator) for _ in range(steps)]


def run_master(weight: torch.Tensor, grads, **adamw) -> tuple[torch.nn.Parameter, dict]:
    parameter = torch.nn.Parameter(weight.clone())
    masters = precision.bf16_weights(torch.nn.ParameterList([parameter]))
    optimizer = precision.MasterWeightAdamW([parameter], masters=masters, **adamw)
    for grad in grads:
        parameter.grad = grad.to(torch.bfloat16)
        optimizer.step()
        optimizer.zero_grad()
    return parameter, masters


def run_fp32(weight: torch.Tensor, grads, **adamw) -> torch.Tensor:
    parameter = torch.nn.Parameter(weight.clone())
    optimizer = torch.optim.AdamW([parameter], **adamw)
    for grad in grads:
        parameter.grad = grad.to(torch.bfloat16).float()  # the same bf16 gradients, as autocast's backward makes
        optimizer.step()
    return parameter.detach()


def test_follows_fp32_adamw_and_the_weights_are_the_masters_rounded():
    weight, grads = torch.randn(64, 32) * 0.05, gradients((64, 32))
    parameter, masters = run_master(weight, grads, lr=1e-3)
    expected = run_fp32(weight, grads, lr=1e-3)
    (master,) = masters.values()
    assert parameter.dtype == torch.bfloat16 and master.dtype == torch.float32
    assert torch.equal(parameter.data, master.to(torch.bfloat16))
    # Where fp32 AdamW moved the weights, the masters moved the same way, to within bf16 moments' rounding.
    moved = expected - weight
    assert (master - expected).norm() < 0.02 * moved.norm()
    assert (master - expected).abs().max() < 0.05 * moved.abs().max()


def test_updates_below_bf16s_resolution_reach_the_masters():
    weight, grads = torch.ones(16, 16), [torch.ones(16, 16)] * STEPS  # Adam's step ~lr; bf16 steps 2^-7 near 1.0
    parameter, masters = run_master(weight, grads, lr=1e-4)
    (master,) = masters.values()
    assert master.sub(1).mean().item() == pytest.approx(-STEPS * 1e-4, rel=0.02)
    naive = torch.nn.Parameter(weight.to(torch.bfloat16))  # what bf16 weights alone would do: nothing at all
    optimizer = torch.optim.AdamW([naive], lr=1e-4)
    for grad in grads:
        naive.grad = grad.to(torch.bfloat16)
        optimizer.step()
    assert torch.equal(naive.data, weight.to(torch.bfloat16))


def test_weight_decay_is_applied_to_the_masters():
    weight = torch.full((8,), 0.5)
    _, masters = run_master(weight, [torch.zeros(8)] * 10, lr=1e-2, weight_decay=0.1)
    (master,) = masters.values()
    assert master == pytest.approx(torch.full((8,), 0.5 * (1 - 1e-3) ** 10), rel=1e-5)


def test_unknown_precision_and_conflicting_settings_are_refused():
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32, bf16_states, got 'fp8'"):
        train.TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="bf16_states .* not with deepspeed .* nor lean_layers"):
        train.TrainConfig(precision="bf16_states", lean_layers=True)


def tiny_trainer(model_dir, output, **settings):
    from pipeline.training import trainable

    tokenizer = loading.load_tokenizer(str(model_dir))
    samples = [{**chat_format.tokenize_conversation(tokenizer, [{"role": "user", "content": f"hello {i}"},
                                                              {"role": "assistant", "content": f"hi {i} there"}], 64),
                "conversation_ids": [str(i)]} for i in range(16)]
    config = train.TrainConfig(max_steps=4, batch_size=2, max_seq_length=64, precision="bf16_states", warmup_steps=0,
                               learning_rate=1e-3, **settings)
    trainer, _ = train.make_trainer(trainable.prepare(loading.load_model(str(model_dir)), config), tokenizer,
                                    Dataset.from_list(batching.pack(samples, 64)), None, config, output)
    trainer.remove_callback(train.StepMetrics)  # MLflow logging is not under test (no active run here)
    return trainer


def test_the_train_stage_trains_bf16_and_resumes_from_a_checkpoint_to_the_same_weights(tiny_model_dir, tmp_path):
    straight = tiny_trainer(tiny_model_dir, tmp_path / "straight")
    before = {n: p.detach().float().clone() for n, p in straight.model.named_parameters()}
    straight.train()
    assert straight.precision == "bf16_states" and not straight.args.bf16  # no autocast
    assert isinstance(straight.optimizer.optimizer, precision.MasterWeightAdamW)
    assert {p.dtype for p in straight.model.parameters()} == {torch.bfloat16}
    assert all(not torch.equal(before[n], p.float()) for n, p in straight.model.named_parameters())
    moments = [s["exp_avg_sq"].dtype for s in straight.optimizer.optimizer.state.values()]
    assert moments and set(moments) == {torch.bfloat16}

    # The same run stopped after step 2 with a checkpoint (which holds the masters) and resumed by a new Trainer.
    class StopAtTwo(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_save = control.should_training_stop = True

    first = tiny_trainer(tiny_model_dir, tmp_path / "split")
    first.add_callback(StopAtTwo())
    first.train()
    assert first.state.global_step == 2
    resumed = tiny_trainer(tiny_model_dir, tmp_path / "split")
    resumed.train(resume_from_checkpoint=str(tmp_path / "split" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    for (name, expected), (_, actual) in zip(straight.model.named_parameters(), resumed.model.named_parameters(),
                                             strict=True):
        assert torch.equal(expected, actual), name


def test_freeze_mode_trains_with_every_weight_bf16_and_the_frozen_ones_unchanged(tiny_model_dir, tmp_path):
    """freeze + bf16_states: the frozen layers are cast too (no autocast: an fp32 layer among bf16 activations
    fails), without a master; only the trainable ones move."""
    trainer = tiny_trainer(tiny_model_dir, tmp_path / "freeze", mode="freeze", trainable_top_layers=1)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert frozen and {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}
    trainer.train()
    assert trainer.state.global_step == 4
    assert all(torch.equal(frozen[n], p) for n, p in trainer.model.named_parameters() if n in frozen)
    assert len(trainer.optimizer.optimizer.masters) == sum(p.requires_grad for p in trainer.model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="moving the model to another device needs a GPU")
def test_the_masters_follow_their_parameters_to_the_device_the_model_moves_to():
    """The optimizer is built before the Trainer moves the model to the GPU: the masters must follow."""
    layer = torch.nn.Linear(4, 4)
    masters = precision.bf16_weights(layer)
    optimizer = precision.MasterWeightAdamW(list(layer.parameters()), masters=masters, lr=1e-3)
    layer.to("cuda")
    layer(torch.ones(2, 4, device="cuda", dtype=torch.bfloat16)).sum().backward()
    optimizer.step()
    assert {m.device.type for m in optimizer.masters.values()} == {"cuda"}
    assert {m.dtype for m in optimizer.masters.values()} == {torch.float32}
