"""Stage 4, evaluate: the fine-tuned candidate and the base model on the same held-out test dialogues.

    python -m pipeline evaluate --config configs/embedded.yaml --run-date 2026-11-22 \
        --dataset data/conversations/dt=2026-11-22 --model runs/<dag>/<run>/train/model

Greedy replies are scored with BLEU, chrF and ROUGE-1/2/L (language-aware, see metrics) and embedding similarity
(meaning, see similarity) overall and per language, plus perplexity of the reference replies. Each model is scored
twice with the same loaded weights: on the rolling held-out split, and on the fixed outside anchor set (anchor.py),
whose scores are `anchor_<metric>`. Metric names are `<model>/[anchor_]<metric>[_<lang>]`, the same every night, so
the MLflow compare view lines runs up. Per-example replies and similarities are in samples.parquet (held-out) and
samples_anchor.parquet (columns language, prompt, reference, <model>, <model>_similarity) for promote's bootstrap.
A model whose exact weights were already scored on the same examples with the same settings (the base model every
night, the champion once its night as candidate is cached) is not loaded, the champion not even downloaded (its
digest is on its registry version): its replies and perplexity come from the generation cache (generation_cache.py;
hits and misses on the run's `evaluate.cache.*` tags and in evaluation.json), and its metrics are recomputed from
them. Prints the directory holding evaluation.json.
"""

from __future__ import annotations

import functools
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from pipeline.config import ProjectConfig, RunContext, as_params
from pipeline.data import partitions
from pipeline.evaluation import anchor, generation_cache, held_out, metrics, perplexity, similarity
from pipeline.model import chat_format, generation, loading
from pipeline.process import failpoints, progress
from pipeline.storage import outputs
from pipeline.tracking import registry, runs

log = logging.getLogger(__name__)
# fp32: batched greedy then matches one-at-a-time decoding. The device is part of the generation cache's key: a
# GPU's kernels round differently, so its replies are not reused for a CPU's, nor the other way round.
EVAL_DTYPE, EVAL_DEVICE = torch.float32, "cuda" if torch.cuda.is_available() else "cpu"


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
    anchor: dict | None = field(
        default=None, metadata={"help": "Fixed outside set scored every night (anchor.AnchorConfig); null: none."}
    )
    min_examples_per_language: int | None = field(
        default=10, metadata={"help": "Fewest held-out replies per language (promote's bootstrap); null: no check."}
    )
    cache: bool = field(default=True, metadata={
        "help": "Reuse the replies of weights already scored on the same examples and settings; false: compute all."})
    cache_uri: str | None = field(default=None, metadata={
        "help": "Where cache entries live: null = artifacts of the experiment's generation-cache MLflow run; or "
                "s3://... or a directory (generation_cache.py)."})

    def __post_init__(self):
        if self.anchor is not None:
            anchor.settings(self.anchor)  # its keys and types are checked when the config loads, not at scoring time


def run(config: EvaluateConfig, project: ProjectConfig, ctx: RunContext, dataset: str, model: str) -> Path:
    failpoints.hit("evaluate.start", ctx.run_type)  # tests hold one run here while another overtakes it
    with runs.stage_run(project, ctx, "evaluate"):
        mlflow.log_params(as_params(config, "evaluate"))
        partition = partitions.read(dataset)  # refuses bytes other than those validate approved
        turns, dataset = partition.turns, str(partition.path)
        runs.log_dataset(partition.path, partition.manifest, context="evaluation")
        # Every rule on the evaluation sets is checked before the first (minutes-long) model is loaded.
        examples = held_out.examples(turns, config.split, config.max_examples, config.min_examples_per_language,
                                     dataset)
        anchor_set = anchor_examples(config, turns)
        others, champion_version = incumbents(config, project, ctx)
        contenders = {"candidate": model, **others}
        cache = generation_cache.open_cache(config.cache, config.cache_uri, mlflow.active_run().info.experiment_id)
        scores, samples = {}, sample_table(examples)
        anchor_samples = sample_table(anchor_set.examples if anchor_set else [])
        candidate_prompt = trained_system_prompt(model)
        for name, reference in contenders.items():
            # Each fine-tuned model is prompted as it was trained; the base model as tonight's candidate.
            system_prompt = trained_system_prompt(reference) if name == "champion" else candidate_prompt
            scores[name], columns, anchor_columns = evaluate_model(
                reference, examples, turns, config, system_prompt, name, anchor_set.examples if anchor_set else [],
                cache)
            samples = samples.assign(**columns)
            anchor_samples = anchor_samples.assign(**anchor_columns)
        shutil.rmtree(outputs.run_dir(project, ctx, "evaluate_champion"), ignore_errors=True)  # a 0.5 GB copy
        cache_report = cache.report() if cache else {"enabled": False}
        output = write_outputs(scores, samples, anchor_set, anchor_samples, project, ctx, partition, model,
                               champion_version, config.evaluate_champion, cache_report)
        log_results(scores, samples, anchor_samples, cache)
    return output


def anchor_examples(config: EvaluateConfig, turns: pd.DataFrame) -> anchor.AnchorSet | None:
    if config.anchor is None:
        return None
    anchor_set = anchor.load(anchor.settings(config.anchor))  # digest checked: a changed source stops the stage
    anchor.assert_not_trained_on(anchor_set, turns)
    mlflow.log_params({"evaluate.anchor_digest": anchor_set.digest, "evaluate.anchor_examples": len(anchor_set.examples)})
    return anchor_set


def sample_table(examples: list[chat_format.EvalExample]) -> pd.DataFrame:
    return pd.DataFrame({
        "conversation_id": [e.conversation_id for e in examples], "language": [e.language for e in examples],
        "prompt": [e.history[-1]["content"] for e in examples], "reference": [e.reference for e in examples],
    })


def incumbents(config: EvaluateConfig, project: ProjectConfig, ctx: RunContext) -> tuple[dict, str | None]:
    """The models the candidate must be compared with tonight, on the same examples: champion and base."""
    found, champion_version = {}, None
    if config.evaluate_champion:
        runs.connect(project)
        version = registry.champion(MlflowClient(), project.registered_model)
        if version is not None:
            # Downloaded only if the generation cache does not hold its replies (evaluate_model).
            found["champion"] = registry.RegisteredWeights.of(version, outputs.run_dir(project, ctx, "evaluate_champion"))
            champion_version = str(version.version)
            mlflow.log_param("evaluate.champion_version", champion_version)
    if config.evaluate_base:
        found["base"] = project.base_model
    return found, champion_version


def local_weights(reference: str | registry.RegisteredWeights) -> str:
    """A path or reference the loaders take; a registry version is downloaded here, the first time it is needed."""
    return reference.local_path() if isinstance(reference, registry.RegisteredWeights) else reference


def trained_system_prompt(model: str | registry.RegisteredWeights) -> str | None:
    if isinstance(model, registry.RegisteredWeights):
        return model.train_config().get("train.system_prompt")
    return outputs.train_config(model).get("train.system_prompt")


def evaluate_model(reference, examples, turns, config: EvaluateConfig, system_prompt, name: str = "model",
                   anchor_examples: list[chat_format.EvalExample] = (),
                   cache: generation_cache.GenerationCache | None = None):
    """One model's scores on the held-out examples and, with the weights loaded once, on the anchor examples (keys
    `anchor_*`); plus per-example sample columns (`<name>`: reply, `<name>_similarity`) of each set. Replies and
    perplexity come from `cache` where it holds them; the weights are loaded only for the sets it does not.
    `reference`: a path or model reference, or a registry.RegisteredWeights (the champion), downloaded only then."""
    sets = {"held_out": (examples, held_out.dialogues(turns, config.split, config.max_examples))}
    if anchor_examples:
        sets["anchor"] = (anchor_examples, [[*e.history, {"role": "assistant", "content": e.reference}]
                                            for e in anchor_examples])
    keys = cache_keys(cache, reference, name, sets, config, system_prompt)
    found = {s: cache.get(keys[s], len(sets[s][0]), name, s) for s in sets} if cache else dict.fromkeys(sets)
    missing = [set_name for set_name, computed in found.items() if computed is None]
    if missing:
        path = local_weights(reference)
        tokenizer, model = loading.load_tokenizer(path), loading.load_model(path, EVAL_DTYPE).to(EVAL_DEVICE)
        for set_name in missing:
            label = name if set_name == "held_out" else f"{name} {set_name}"  # progress: which model, which set
            found[set_name] = compute_outputs(model, tokenizer, *sets[set_name], config, system_prompt, label)
            if cache:
                cache.put(keys[set_name], found[set_name])
    scores, columns = score_replies(found["held_out"], examples, name)
    anchor_columns = {}
    if anchor_examples:
        anchor_scores, anchor_columns = score_replies(found["anchor"], anchor_examples, name)
        scores.update({f"anchor_{key}": value for key, value in anchor_scores.items()})
    log.info("%s: %s", reference, {k: round(v, 2) for k, v in scores.items() if "_" not in k.removeprefix("anchor_")})
    return scores, columns, anchor_columns


def cache_keys(cache, reference, name: str, sets: dict, config: EvaluateConfig, system_prompt) -> dict:
    """The cache key of each set for this model; none without a cache (the weights are then not even hashed)."""
    if cache is None:
        return {}
    recorded = reference.recorded_digest if isinstance(reference, registry.RegisteredWeights) else None
    digest = cache.model_digests[name] = recorded or generation_cache.weights_digest(local_weights(reference))
    settings = generation_cache.settings(
        max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, max_seq_length=config.max_seq_length,
        system_prompt=system_prompt, dtype=str(EVAL_DTYPE), device=EVAL_DEVICE,
        code=(generation, chat_format, loading, perplexity))  # the code that renders, decodes and measures
    return {set_name: generation_cache.Key(digest, generation_cache.examples_digest(*pair), settings)
            for set_name, pair in sets.items()}


def compute_outputs(model, tokenizer, examples, dialogues, config: EvaluateConfig, system_prompt, label: str):
    """Greedy replies to `examples` and the perplexity of `dialogues`' references: what the cache stores."""
    replies = generation.generate_replies(
        model, tokenizer, [e.history for e in examples], system_prompt, config.max_new_tokens, config.batch_size,
        on_batch=functools.partial(progress.generation, label),  # which model, batch i/n, replies so far
    )
    ppl = perplexity.of_dialogues(model, tokenizer, dialogues, config.max_seq_length, config.batch_size, system_prompt)
    return generation_cache.Outputs(replies, ppl)


def score_replies(computed: generation_cache.Outputs, examples, name: str):
    """Corpus scores (n-gram metrics, similarity, perplexity) and the per-example columns, from the replies: metric
    code changes apply to cached replies too."""
    replies, references, languages = computed.replies, [e.reference for e in examples], [e.language for e in examples]
    per_example = similarity.cosines(replies, references)
    scores = {**metrics.score(replies, references, languages), **similarity.score(per_example, languages),
              "perplexity": computed.perplexity}
    return scores, {name: replies, f"{name}_similarity": per_example}


def write_outputs(scores, samples, anchor_set, anchor_samples, project, ctx, partition, model, champion_version,
                  champion_checked: bool, cache_report: dict) -> Path:
    final, manifest = outputs.run_dir(project, ctx, "evaluate"), partition.manifest
    files = [outputs.EVALUATION, outputs.SAMPLES["held-out"]] + ([outputs.SAMPLES["anchor"]] if anchor_set else [])
    with outputs.atomic_dir(final) as scratch:
        samples.to_parquet(scratch / outputs.SAMPLES["held-out"], index=False)
        if anchor_set:
            anchor_samples.to_parquet(scratch / outputs.SAMPLES["anchor"], index=False)
        outputs.write_json(scratch / outputs.EVALUATION, {
            "scores": scores, "examples": len(samples), "model": str(model), "dataset": str(partition.path),
            "data_digest": manifest["digest"], "data_input_digest": manifest.get("input_digest", ""),
            # Whether evaluate looked for a champion (None then means "there was none"): promote re-checks it.
            "champion_version": champion_version, "champion_checked": champion_checked,
            "anchor": anchor_set and {"name": anchor_set.name, "digest": anchor_set.digest,
                                      "source": anchor_set.source, "examples": len(anchor_set.examples)},
            "cache": cache_report,  # which replies were reused, and the weights digests they were found by
        })
        outputs.write_json(scratch / outputs.MANIFEST, {"files": files})
    return final


def log_results(scores: dict[str, dict[str, float]], samples: pd.DataFrame, anchor_samples: pd.DataFrame,
                cache: generation_cache.GenerationCache | None) -> None:
    flat = {f"{name}/{metric}": value for name, values in scores.items() for metric, value in values.items()}
    mlflow.log_metrics(flat)
    mlflow.log_metrics({"evaluate/examples": len(samples), "evaluate/anchor_examples": len(anchor_samples)})
    mlflow.set_tags(cache.tags() if cache else {"evaluate.cache": "off"})
    if cache:
        mlflow.log_metrics({f"evaluate/cache_{kind}": count for kind, count in cache.counts().items()})
    mlflow.log_table(samples, artifact_file="eval_samples.json")
    if len(anchor_samples):
        mlflow.log_table(anchor_samples, artifact_file="eval_samples_anchor.json")
    runs.log_to_parent(flat)
