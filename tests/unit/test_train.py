"""The train stage's Trainer: the console gets step / total, ETA and loss as progress events (rank 0 only); the
chunked loss (losses.py) trains exactly like the stock one."""


import pytest
from tiny_model import tiny_trainer

from pipeline import train
from pipeline.training import trainer


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "activation-checkpointing"])
def test_chunked_loss_trains_step_by_step_like_the_stock_loss(tiny_model_dir, tmp_path, checkpointing):
    def train_losses(chunked: bool):
        config = train.TrainConfig(max_steps=3, batch_size=2, logging_steps=1, max_seq_length=64, precision="fp32",
                                   warmup_steps=0, chunked_loss=chunked, activation_checkpointing=checkpointing)
        tiny = tiny_trainer(tiny_model_dir, config, tmp_path / str(chunked))
        tiny.remove_callback(train.StepMetrics)
        tiny.train()
        assert tiny.model.is_activation_checkpointing == checkpointing
        # as trained: accelerate's wrapper around the fused AdamW that gradient clipping hands its coefficient to
        assert type(tiny.optimizer).__name__ == "AcceleratedOptimizer"
        assert trainer.fused_optimizer(tiny.optimizer) is tiny.optimizer.optimizer
        logs = [entry for entry in tiny.state.log_history if "loss" in entry]
        return tiny.chunked_loss, [(e["loss"], e["grad_norm"]) for e in logs]

    (chunked, with_chunks), (stock, without) = train_losses(True), train_losses(False)
    assert chunked and not stock and len(with_chunks) == 3
    for (loss, grad_norm), (expected_loss, expected_norm) in zip(with_chunks, without, strict=True):
        assert loss == pytest.approx(expected_loss, rel=1e-4) and grad_norm == pytest.approx(expected_norm, rel=1e-3)


