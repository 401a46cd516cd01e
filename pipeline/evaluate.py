"""Stage 4, evaluate: the fine-tuned candidate and the base model on the same held-out test dialogues.

    python -m pipeline evaluate --config configs/embedded.yaml --run-date 2026-11-22 \
        --dataset data/conversations/dt=2026-11-22 --model runs/<dag>/<run>/train/model

Greedy replies are scored with BLEU, chrF and ROUGE-1/2/L (language-aware, see metrics) overall and per language,
plus perplexity of the reference replies. Metric names are `<model>/<metric>[_<lang>]`, the same every night, so
the MLflow compare view lines runs up. Prints the directory holding evaluation.json for the promote task.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from pipeline import chat_data, generation, metrics, models, progress, registry, storage, tracking
from pipeline.config import ProjectConfig, RunContext, as_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    split: str = field(default="test", metadata={"help": "Held-out split to evaluate on."})
    max_examples: int | None = field(default=200, metadata={"help": "Cap on replies generated per model."})
    max_new_tokens: int = field(default=48, metadata={"help": "Longest generated reply, in tokens."})
    batch_size: int = field(default=32, metadata={"help": "Prompts decoded together (32: 7.4x one-at-a-time, make bench)."})
    evaluate_base: bool = field(default=True, metadata={"help": "Also score the base model on the same examples."})
    evaluate_champion: bool = field(
        default=True, metadata={"help": "Also score the current champion (if any) on the same examples."}
    )
    max_seq_length: int = field(default=256, metadata={"help": "Truncation for the perplexity pass."})


def run(config: EvaluateConfig, project: ProjectConfig, ctx: RunContext, dataset: str, model: str) -> Path:
    with tracking.stage_run(project, ctx, "evaluate"):
        mlflow.log_params(as_params(config, "evaluate"))
        turns = pd.read_parquet(Path(dataset) / "turns.parquet")
        tracking.log_dataset(Path(dataset), storage.read_manifest(dataset), context="evaluation")
        examples = chat_data.eval_examples(turns, config.split)[: config.max_examples]
        others, champion_version = incumbents(config, project, ctx)
        contenders = {"candidate": model, **others}
        scores, samples = {}, pd.DataFrame({
            "conversation_id": [e.conversation_id for e in examples], "language": [e.language for e in examples],
            "prompt": [e.history[-1]["content"] for e in examples], "reference": [e.reference for e in examples],
        })
        candidate_prompt = trained_system_prompt(model)
        for name, reference in contenders.items():
            # Each fine-tuned model is prompted as it was trained; the base model as tonight's candidate.
            system_prompt = trained_system_prompt(reference) if name == "champion" else candidate_prompt
            scores[name], samples[name] = evaluate_model(reference, examples, turns, config, system_prompt, name)
        shutil.rmtree(storage.run_dir(project, ctx, "evaluate_champion"), ignore_errors=True)  # a 0.5 GB copy
        output = write_outputs(scores, samples, project, ctx, dataset, model, champion_version)
        log_results(scores, samples)
    return output


def incumbents(config: EvaluateConfig, project: ProjectConfig, ctx: RunContext) -> tuple[dict[str, str], str | None]:
    """The models the candidate must be compared with tonight, on the same examples: champion and base."""
    found, champion_version = {}, None
    if config.evaluate_champion:
        tracking.connect(project)
        version = registry.champion(MlflowClient(), project.registered_model)
        if version is not None:
            destination = storage.run_dir(project, ctx, "evaluate_champion")
            found["champion"] = str(registry.download_weights(project.registered_model, version.version, destination))
            champion_version = str(version.version)
            mlflow.log_param("evaluate.champion_version", champion_version)
    if config.evaluate_base:
        found["base"] = project.base_model
    return found, champion_version


def trained_system_prompt(model_dir: str) -> str | None:
    return json.loads((Path(model_dir) / "train_config.json").read_text()).get("train.system_prompt")


def evaluate_model(reference, examples, turns, config: EvaluateConfig, system_prompt, name: str = "model"):
    tokenizer = models.load_tokenizer(reference)
    model = models.load_model(reference)  # fp32: batched greedy then matches one-at-a-time decoding
    replies = generation.generate_replies(
        model, tokenizer, [e.history for e in examples], system_prompt, config.max_new_tokens, config.batch_size,
        on_batch=functools.partial(progress.generation, name),  # which model, batch i/n, replies so far
    )
    scores = metrics.score(replies, [e.reference for e in examples], [e.language for e in examples])
    scores["perplexity"] = reference_perplexity(model, tokenizer, turns, config, system_prompt)
    log.info("%s: %s", reference, {k: round(v, 2) for k, v in scores.items() if "_" not in k})
    return scores, replies


@torch.inference_mode()
def reference_perplexity(model, tokenizer, turns, config: EvaluateConfig, system_prompt) -> float:
    """exp(mean NLL) of the reference assistant tokens given their history, over the evaluation split."""
    encoded = [
        chat_data.tokenize_conversation(tokenizer, messages, config.max_seq_length, system_prompt)
        for _, _, messages in chat_data.conversations(turns, config.split)[: config.max_examples]
    ]
    encoded = [e for e in encoded if e is not None]
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(encoded), config.batch_size):
        batch = chat_data.pad_batch(encoded[start : start + config.batch_size], tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
            ignore_index=chat_data.IGNORE_INDEX, reduction="sum",
        )
        total_nll += nll.item()
        total_tokens += int((labels != chat_data.IGNORE_INDEX).sum())
    return math.exp(total_nll / max(total_tokens, 1))


def write_outputs(scores, samples, project, ctx, dataset, model, champion_version) -> Path:
    final, manifest = storage.run_dir(project, ctx, "evaluate"), storage.read_manifest(dataset)
    with storage.atomic_dir(final) as scratch:
        samples.to_parquet(scratch / "samples.parquet", index=False)
        storage.write_json(scratch / "evaluation.json", {
            "scores": scores, "examples": len(samples), "model": str(model), "dataset": str(dataset),
            "data_digest": manifest["digest"], "data_input_digest": manifest.get("input_digest", ""),
            "champion_version": champion_version,
        })
        storage.write_json(scratch / storage.MANIFEST, {"files": ["evaluation.json", "samples.parquet"]})
    return final


def log_results(scores: dict[str, dict[str, float]], samples: pd.DataFrame) -> None:
    flat = {f"{name}/{metric}": value for name, values in scores.items() for metric, value in values.items()}
    mlflow.log_metrics(flat)
    mlflow.log_metric("evaluate/examples", len(samples))
    mlflow.log_table(samples, artifact_file="eval_samples.json")
    tracking.log_to_parent(flat)
