"""Stage 4, evaluate: the fine-tuned candidate and the base model on the same held-out test dialogues.

    python -m pipeline evaluate --config configs/embedded.yaml --run-date 2026-11-22 \
        --dataset data/conversations/dt=2026-11-22 --model runs/<dag>/<run>/train/model

Greedy replies are scored with BLEU, chrF and ROUGE-1/2/L (language-aware, see metrics) and embedding similarity
(meaning, see similarity) overall and per language, plus perplexity of the reference replies. Each model is scored
with the same loaded weights on the held-out window (tonight's test split and, with `held_out_days`, those of the
days before: held_out.window), on the fixed outside anchor set (anchor.py; scores `anchor_<metric>`) and on the
memory set of earlier nights' held-out replies (memory_set.py; `memory_<metric>`). Metric names are
`<model>/[<set>_]<metric>[_<lang>]`, the same every night, so the MLflow compare view lines runs up. Per-example
replies and similarities are in samples.parquet (held-out) and samples_anchor.parquet, samples_memory.parquet
(columns conversation_id, language, prompt, reference, <model>, <model>_similarity) for promote's bootstrap.
A reply a model already gave to the same prompt with the same settings (the base model and the champion on every
day of the window but the newest, on the anchor set, on the memory set) comes from the generation cache
(generation_cache.py; replies reused and outcomes on the run's `evaluate.cache.*` tags and in evaluation.json): a
model with nothing missing is not loaded, the champion not even downloaded (its digest is on its registry version),
and metrics are always recomputed from the replies. Prints the directory holding evaluation.json.
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
from pipeline.evaluation import (
    anchor,
    generation_cache,
    held_out,
    memory_set,
    metrics,
    perplexity,
    similarity,
)
from pipeline.model import chat_format, generation, loading, output_head
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
    held_out_days: int = field(default=1, metadata={
        "help": "Days of test conversations the gate judges: tonight's partition and the test splits of the days "
                "before it (held_out.window); 1: tonight's alone."})
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
    memory: dict | None = field(default=None, metadata={
        "help": "Earlier nights' held-out replies, scored every night to show forgetting (memory_set.MemoryConfig)."})
    history_turns: int | None = field(default=None, metadata={
        "help": "Prompts keep the last N turns of history (odd: from a user turn); null: the whole conversation."})
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
        if self.memory is not None:
            memory_set.settings(self.memory)
        if self.held_out_days < 1:
            raise ValueError(f"held_out_days must be >= 1 (tonight's partition), got {self.held_out_days}")
        if self.history_turns is not None and (self.history_turns < 1 or self.history_turns % 2 == 0):
            raise ValueError(f"history_turns must be odd and >= 1 (the prompt starts with a user turn), got "
                             f"{self.history_turns}")


def run(config: EvaluateConfig, project: ProjectConfig, ctx: RunContext, dataset: str, model: str) -> Path:
    failpoints.hit("evaluate.start", ctx.run_type)  # tests hold one run here while another overtakes it
    with runs.stage_run(project, ctx, "evaluate"):
        mlflow.log_params(as_params(config, "evaluate"))
        partition = partitions.read(dataset)  # refuses bytes other than those validate approved
        turns, dataset = partition.turns, str(partition.path)
        runs.log_dataset(partition.path, partition.manifest, context="evaluation")
        # Every rule on the evaluation sets is checked before the first (minutes-long) model is loaded.
        scored, window = held_out.window(turns, project, ctx.run_date, config.held_out_days, config.split)
        examples = held_out.last_turns(held_out.examples(
            scored, config.split, config.max_examples, config.min_examples_per_language, dataset), config.history_turns)
        extra, about = outside_sets(config, project, ctx, turns, scored)
        about["held_out"] = {**window, "examples": len(examples)}
        others, champion_version = incumbents(config, project, ctx)
        contenders = {"candidate": model, **others}
        cache = generation_cache.open_cache(config.cache, config.cache_uri, mlflow.active_run().info.experiment_id)
        scores = {}
        samples = {"held-out": sample_table(examples), **{name: sample_table(found) for name, found in extra.items()}}
        candidate_prompt = trained_system_prompt(model)
        for name, reference in contenders.items():
            # Each fine-tuned model is prompted as it was trained; the base model as tonight's candidate.
            system_prompt = trained_system_prompt(reference) if name == "champion" else candidate_prompt
            scores[name], columns = evaluate_model(reference, examples, scored, config, system_prompt, name, extra,
                                                   cache)
            samples = {set_name: table.assign(**columns[set_name]) for set_name, table in samples.items()}
        shutil.rmtree(outputs.run_dir(project, ctx, "evaluate_champion"), ignore_errors=True)  # a 0.5 GB copy
        cache_report = cache.report() if cache else {"enabled": False}
        output = write_outputs(scores, samples, about, project, ctx, partition, model, champion_version,
                               config.evaluate_champion, cache_report)
        log_results(scores, samples, cache)
    return output


def outside_sets(config: EvaluateConfig, project: ProjectConfig, ctx: RunContext, turns: pd.DataFrame,
                 scored: pd.DataFrame):
    """The sets scored beside the held-out window `scored`, by name ('anchor', 'memory'), and what each is
    (evaluation.json). `turns`: tonight's partition, which the anchor set must be outside of."""
    extra, about = {}, {"anchor": None, "memory": None}
    if config.anchor is not None:
        anchor_set = anchor.load(anchor.settings(config.anchor))  # digest checked: a changed source stops the stage
        anchor.assert_not_trained_on(anchor_set, turns)
        extra["anchor"] = anchor_set.examples
        about["anchor"] = {"name": anchor_set.name, "digest": anchor_set.digest, "source": anchor_set.source,
                           "examples": len(anchor_set.examples)}
        mlflow.log_params({"evaluate.anchor_digest": anchor_set.digest, "evaluate.anchor_examples": len(extra["anchor"])})
    if config.memory is not None:
        found, drawn_from = memory_set.examples(memory_set.settings(config.memory), project, ctx.run_date, scored,
                                                after_days=config.held_out_days - 1)
        if found:  # the first night has no earlier partition
            extra["memory"] = held_out.last_turns(found, config.history_turns)
        about["memory"] = {**drawn_from, "examples": len(found)}
    return extra, about


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
                   extra: dict[str, list[chat_format.EvalExample]] | None = None,
                   cache: generation_cache.GenerationCache | None = None):
    """One model's scores on the held-out examples and, with the weights loaded once, on each `extra` set (keys
    `<set>_*`: anchor_bleu, memory_rougeL); plus per-example sample columns (`<name>`: reply, `<name>_similarity`)
    of each set, by set name ('held-out', 'anchor', 'memory'). Replies and perplexity parts come from `cache` where
    it holds them; the weights are loaded only if something is missing. `reference`: a path or model reference, or
    a registry.RegisteredWeights (the champion), downloaded only then."""
    sets = {"held_out": (examples, held_out.dialogues(turns, config.split, config.max_examples))}
    for set_name, found in (extra or {}).items():
        sets[set_name] = (found, [[*e.history, {"role": "assistant", "content": e.reference}] for e in found])
    key = cache_key(cache, reference, name, config, system_prompt)
    known, loaded = cache.known(key, name) if cache else generation_cache.Known(), None
    for set_name, (set_examples, dialogues) in sets.items():
        prompts, references = known.missing(set_examples, dialogues)
        if cache:
            cache.record(name, set_name, len(set_examples) - len(prompts), len(set_examples),
                         computed_nothing=not (prompts or references))
        if prompts or references:
            loaded = loaded or load(reference)
            label = name if set_name == "held_out" else f"{name} {set_name}"  # progress: which model, which set
            new = compute_missing(*loaded, set_examples, prompts, dialogues, references, config, system_prompt,
                                  label, known)
            if cache:
                cache.put(key, new)
    found = {set_name: known.outputs(*pair) for set_name, pair in sets.items()}
    scores, held_out_columns = score_replies(found["held_out"], examples, name)
    columns = {"held-out": held_out_columns}
    for set_name, set_examples in (extra or {}).items():
        set_scores, columns[set_name] = score_replies(found[set_name], set_examples, name)
        scores.update({f"{set_name}_{key}": value for key, value in set_scores.items()})
    log.info("%s: %s", reference, {k: round(v, 2) for k, v in scores.items() if k.count("_") <= 1})
    return scores, columns


def load(reference) -> tuple:
    path = local_weights(reference)
    return loading.load_tokenizer(path), loading.load_model(path, EVAL_DTYPE).to(EVAL_DEVICE)


def cache_key(cache, reference, name: str, config: EvaluateConfig, system_prompt) -> generation_cache.Key | None:
    """The cache key of this model; none without a cache (the weights are then not even hashed)."""
    if cache is None:
        return None
    recorded = reference.recorded_digest if isinstance(reference, registry.RegisteredWeights) else None
    digest = cache.model_digests[name] = recorded or generation_cache.weights_digest(local_weights(reference))
    settings = generation_cache.settings(
        max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, max_seq_length=config.max_seq_length,
        system_prompt=system_prompt, dtype=str(EVAL_DTYPE), device=EVAL_DEVICE,
        code=(generation, chat_format, loading, perplexity, output_head))  # the code that renders, decodes, measures
    return generation_cache.Key(digest, settings)


def compute_missing(tokenizer, model, examples, prompts: list[int], dialogues, references: list[int],
                    config: EvaluateConfig, system_prompt, label: str,
                    known: generation_cache.Known) -> generation_cache.Known:
    """Greedy replies to the examples at `prompts` and the perplexity parts of the dialogues at `references`,
    added to `known`; returns them alone (what the cache stores)."""
    asked, measured = [examples[i] for i in prompts], [dialogues[i] for i in references]
    replies = generation.generate_replies(
        model, tokenizer, [e.history for e in asked], system_prompt, config.max_new_tokens, config.batch_size,
        on_batch=functools.partial(progress.generation, label),  # which model, batch i/n, replies so far
    ) if asked else []
    parts = perplexity.per_dialogue(model, tokenizer, measured, config.max_seq_length, config.batch_size,
                                    system_prompt)
    return known.add(asked, replies, measured, parts)


def score_replies(computed: generation_cache.Outputs, examples, name: str):
    """Corpus scores (n-gram metrics, similarity, perplexity) and the per-example columns, from the replies: metric
    code changes apply to cached replies too."""
    replies, references, languages = computed.replies, [e.reference for e in examples], [e.language for e in examples]
    per_example = similarity.cosines(replies, references)
    scores = {**metrics.score(replies, references, languages), **similarity.score(per_example, languages),
              "perplexity": computed.perplexity}
    return scores, {name: replies, f"{name}_similarity": per_example}


def write_outputs(scores, samples: dict[str, pd.DataFrame], about: dict, project, ctx, partition, model,
                  champion_version, champion_checked: bool, cache_report: dict) -> Path:
    final, manifest = outputs.run_dir(project, ctx, "evaluate"), partition.manifest
    files = [outputs.EVALUATION, *(outputs.SAMPLES[set_name] for set_name in samples)]
    with outputs.atomic_dir(final) as scratch:
        for set_name, table in samples.items():
            table.to_parquet(scratch / outputs.SAMPLES[set_name], index=False)
        outputs.write_json(scratch / outputs.EVALUATION, {
            "scores": scores, "examples": len(samples["held-out"]), "model": str(model), "dataset": str(partition.path),
            "data_digest": manifest["digest"], "data_input_digest": manifest.get("input_digest", ""),
            # Whether evaluate looked for a champion (None then means "there was none"): promote re-checks it.
            "champion_version": champion_version, "champion_checked": champion_checked,
            **about,  # anchor: name, digest, source, examples; memory: partitions, missing_days, candidates, examples
            "cache": cache_report,  # which replies were reused, and the weights digests they were found by
        })
        outputs.write_json(scratch / outputs.MANIFEST, {"files": files})
    return final


def log_results(scores: dict[str, dict[str, float]], samples: dict[str, pd.DataFrame],
                cache: generation_cache.GenerationCache | None) -> None:
    flat = {f"{name}/{metric}": value for name, values in scores.items() for metric, value in values.items()}
    mlflow.log_metrics(flat)
    mlflow.log_metrics({"evaluate/examples": len(samples["held-out"]),
                        **{f"evaluate/{name}_examples": len(table) for name, table in samples.items() if name != "held-out"}})
    mlflow.set_tags(cache.tags() if cache else {"evaluate.cache": "off"})
    if cache:
        mlflow.log_metrics({f"evaluate/cache_{kind}": count for kind, count in cache.counts().items()})
    for name, table in samples.items():
        mlflow.log_table(table, artifact_file="eval_samples.json" if name == "held-out" else f"eval_samples_{name}.json")
    runs.log_to_parent(flat)
