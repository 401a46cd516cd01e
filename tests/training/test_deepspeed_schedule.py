"""Under DeepSpeed the learning rate follows the plain path's curve step by step. The configs in configs/deepspeed
name no scheduler, so the Trainer builds its own ("linear" warm-up then decay, train.py) for both paths: DeepSpeed's
WarmupDecayLR warms up logarithmically by default and, even set to linear, runs one step behind the Trainer's
(lr 0 for two steps). A real one-process ZeRO-2 Trainer (its own process: DeepSpeed initializes torch.distributed)
and a plain one record the learning rate each optimizer step used."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECORD = """
import json, sys
from datasets import Dataset
from transformers import TrainerCallback
from pipeline import train
from pipeline.model import chat_format, loading
from pipeline.training import distributed
from pipeline.training.samples import batching

model_dir, deepspeed = sys.argv[1], sys.argv[2] or None
if deepspeed:
    distributed.single_process_env()
tokenizer = loading.load_tokenizer(model_dir)
samples = [{**chat_format.tokenize_conversation(tokenizer, [{"role": "user", "content": f"hello {i}"},
                                                          {"role": "assistant", "content": f"hi {i}"}], 64),
            "conversation_ids": [str(i)]} for i in range(32)]
config = train.TrainConfig(max_steps=8, batch_size=2, max_seq_length=64, warmup_steps=3, learning_rate=1e-3,
                           precision="fp32", deepspeed=deepspeed)
trainer, _ = train.make_trainer(loading.load_model(model_dir), tokenizer, Dataset.from_list(batching.pack(samples, 64)),
                                None, config, sys.argv[3])
trainer.remove_callback(train.StepMetrics)
seen = []

class Record(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):  # what this step's optimizer update will use
        seen.append(trainer.optimizer.param_groups[0]["lr"])

trainer.add_callback(Record())
trainer.train()
print("LR", json.dumps(seen))
distributed.finish()  # as the train stage ends: no gloo thread left alive at exit (SIGABRT, "terminate called")
"""


def _learning_rates(model_dir, deepspeed: str, output: Path) -> list[float]:
    result = subprocess.run([sys.executable, "-c", RECORD, str(model_dir), deepspeed, str(output)], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("LR ")]
    return json.loads(line[3:])


def test_every_deepspeed_config_leaves_the_schedule_to_the_trainer():
    for path in sorted((REPO / "configs" / "deepspeed").glob("*.json")):
        assert "scheduler" not in json.loads(path.read_text()), f"{path.name}: its scheduler would differ"


def test_deepspeed_zero2_uses_the_plain_paths_learning_rate_at_every_step(tiny_model_dir, tmp_path):
    plain = _learning_rates(tiny_model_dir, "", tmp_path / "plain")
    zero2 = _learning_rates(tiny_model_dir, "configs/deepspeed/zero2.json", tmp_path / "zero2")
    # the lr each step used: 0 at step 0, the warm-up to 1e-3 at step 3, then the linear decay
    assert len(plain) == 8 and plain[:4] == pytest.approx([0, 1e-3 / 3, 2e-3 / 3, 1e-3]) and plain[-1] < plain[4]
    assert zero2 == pytest.approx(plain, abs=1e-12)
