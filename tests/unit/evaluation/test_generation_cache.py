"""The generation cache: the second night reuses the base model's replies (same scores, and the same as with the
cache off), a new candidate is never served from it, a change to the weights or the settings is a miss, a changed
prompt or reference recomputes that reply or perplexity part alone, a reply is found again in another set, and a
damaged entry is recomputed with a warning, never trusted."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline import evaluate
from pipeline.config import ProjectConfig, RunContext
from pipeline.evaluation import generation_cache
from pipeline.model import chat_format, loading
from pipeline.storage import outputs

SYSTEM_PROMPT = "You are a helpful chatbot."
DIALOGUES = [  # (language, user, assistant, user, assistant)
    ("en", "Hello", "Hi, how are you?", "Fine, thanks.", "Glad to hear it."),
    ("en", "What is your name?", "I am a chatbot.", "Nice name.", "Thank you very much."),
    ("en", "Do you like music?", "Yes, I listen to jazz.", "Who plays it?", "Many bands play jazz."),
    ("zh", "你好", "你好，你好吗?", "很好，谢谢。", "不客气。"),
    ("zh", "你叫什么名字?", "我是聊天机器人。", "好名字。", "谢谢你。"),
]
# The tiny.yaml anchor set (8 Chit Chat replies): the anchor entry is keyed apart from the held-out one.
ANCHOR = {"package": "chitchat_dataset", "size": 8, "seed": 0, "history_turns": 3,
          "digest": "e2e5f3e92c06a6bd4951d19959c516e3d20d709bea9f7892d730cf409e955016"}


def turns_table(split: str = "test") -> pd.DataFrame:
    rows = [(f"c{number}", index, "user" if index % 2 == 0 else "assistant", text, language, split)
            for number, (language, *texts) in enumerate(DIALOGUES) for index, text in enumerate(texts)]
    return pd.DataFrame(rows, columns=["conversation_id", "turn_index", "role", "text", "language", "split"])


def dataset(tmp_path: Path) -> str:
    path = tmp_path / "dataset"
    path.mkdir()
    turns_table().to_parquet(path / "turns.parquet")
    outputs.write_json(path / "manifest.json", {"dataset": "conversations", "partition_date": "2026-11-22",
                                                "digest": outputs.file_digest([path / "turns.parquet"])})
    return str(path)


def model_copy(source: Path, destination: Path, nudge: float = 0.0) -> str:
    """A fine-tuned model directory as train writes it; nudge != 0: other weights (another night's candidate)."""
    shutil.copytree(source, destination)
    outputs.write_json(destination / "train_config.json", {"train.system_prompt": SYSTEM_PROMPT})
    if nudge:
        model = loading.load_model(str(destination))
        torch.manual_seed(1)
        with torch.no_grad():
            for weights in model.parameters():
                weights.add_(torch.randn_like(weights) * nudge)
        model.save_pretrained(destination)
    return str(destination)


def generated(events: Path) -> list[str]:
    """Which model and set generated replies, from the progress events the stage writes (PIPELINE_PROGRESS)."""
    if not events.exists():
        return []
    records = [json.loads(line) for line in events.read_text().splitlines()]
    return sorted({r["model"] for r in records if r["event"] == "generate"})


def evaluation(output: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    return (json.loads((output / "evaluation.json").read_text()), pd.read_parquet(output / "samples.parquet"),
            pd.read_parquet(output / "samples_anchor.parquet"))


def test_night_two_reuses_the_base_models_replies_and_scores_them_as_if_computed(tmp_path, tiny_model_dir,
                                                                                monkeypatch):
    project = ProjectConfig(runs_root=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                            artifact_root=str(tmp_path / "artifacts"), base_model=str(tiny_model_dir))
    config = evaluate.EvaluateConfig(max_examples=8, max_new_tokens=6, batch_size=4, min_examples_per_language=None,
                                     anchor=ANCHOR)
    data, events = dataset(tmp_path), tmp_path / "events.jsonl"
    monkeypatch.setenv("PIPELINE_PROGRESS", str(events))
    # Fine-tuned weights differ from the base model's (equal bytes would share entries, rightly).
    first, second = (model_copy(tiny_model_dir, tmp_path / f"m{n}", nudge) for n, nudge in ((1, 0.05), (2, 0.1)))

    def night(run_id: str, candidate: str, cache: bool = True):
        events.unlink(missing_ok=True)
        output = evaluate.run(dataclasses.replace(config, cache=cache), project,
                              RunContext("2026-11-22", run_id), data, candidate)
        return (*evaluation(output), generated(events))

    one, one_samples, one_anchor, one_generated = night("night-1", first)
    assert one_generated == ["base", "base anchor", "candidate", "candidate anchor"]
    assert one["cache"]["outcomes"] == {m: {"held_out": "miss", "anchor": "miss"} for m in ("candidate", "base")}

    # Night 2: a new candidate (other weights) is computed; the base model is not even loaded.
    two, two_samples, two_anchor, two_generated = night("night-2", second)
    assert two_generated == ["candidate", "candidate anchor"]
    assert two["cache"]["outcomes"] == {"candidate": {"held_out": "miss", "anchor": "miss"},
                                        "base": {"held_out": "hit", "anchor": "hit"}}
    assert two["scores"]["base"] == one["scores"]["base"] and two["scores"]["candidate"] != one["scores"]["candidate"]
    assert two_samples[["base", "base_similarity"]].equals(one_samples[["base", "base_similarity"]])
    assert two_anchor[["base", "base_similarity"]].equals(one_anchor[["base", "base_similarity"]])
    assert two["cache"]["model_digests"]["base"] == one["cache"]["model_digests"]["base"]

    # With the cache off everything is computed again, to the same scores: the cache changed the time, not a number.
    off, off_samples, off_anchor, off_generated = night("night-2-uncached", second, cache=False)
    assert off_generated == ["base", "base anchor", "candidate", "candidate anchor"]
    assert off["cache"] == {"enabled": False} and off["scores"] == two["scores"]
    assert off_samples.equals(two_samples) and off_anchor.equals(two_anchor)

    client = MlflowClient(project.tracking_uri)
    runs = {r.data.tags["airflow.run_id"]: r for r in client.search_runs(
        [client.get_experiment_by_name(project.experiment).experiment_id], "tags.`pipeline.stage` = 'evaluate'")}
    tags, metrics = runs["night-2"].data.tags, runs["night-2"].data.metrics
    assert (tags["evaluate.cache.base"], tags["evaluate.cache.base.anchor"], tags["evaluate.cache.candidate"]) == (
        "hit", "hit", "miss")
    replies = len(two_samples) + len(two_anchor)  # per model: the held-out and anchor replies
    assert (metrics["evaluate/cache_hits"], metrics["evaluate/cache_misses"]) == (replies, replies)
    assert two["cache"]["replies_reused"]["base"] == {"held_out": [len(two_samples)] * 2, "anchor": [8, 8]}
    assert runs["night-2-uncached"].data.tags["evaluate.cache"] == "off"
    # The entries live in one run of the experiment, finished (a store, not a job): a folder per model (and
    # settings): the base model, then each night's candidate.
    (store,) = client.search_runs([runs["night-2"].info.experiment_id], "tags.`pipeline.level` = 'generation_cache'")
    assert store.info.status == "FINISHED" and len(client.list_artifacts(store.info.run_id, "entries")) == 3


@pytest.fixture
def examples():
    turns = turns_table()
    return turns, chat_format.eval_examples(turns, "test")


SCORING = evaluate.EvaluateConfig(max_examples=8, max_new_tokens=6, batch_size=4)


def score_base(reference, examples, cache, config=SCORING, system_prompt=SYSTEM_PROMPT):
    turns, held_out = examples
    scores, columns = evaluate.evaluate_model(str(reference), held_out, turns, config, system_prompt, "base",
                                              cache=cache)
    columns = columns["held-out"]
    return scores, columns, cache and cache.outcomes()["base"]["held_out"]


@pytest.mark.parametrize("change", ["weights", "max_new_tokens", "max_seq_length", "system_prompt"])
def test_a_change_to_the_model_or_settings_is_a_miss(tmp_path, tiny_model_dir, examples, change):
    cache = generation_cache.open_cache(True, str(tmp_path / "cache"), experiment_id="")
    scores, columns, outcome = score_base(tiny_model_dir, examples, cache)
    assert outcome == "miss" and score_base(tiny_model_dir, examples, cache) == (scores, columns, "hit")

    reference, config, system_prompt = tiny_model_dir, SCORING, SYSTEM_PROMPT
    if change == "weights":
        reference = model_copy(tiny_model_dir, tmp_path / "retrained", nudge=0.05)
    if change in ("max_new_tokens", "max_seq_length"):
        config = dataclasses.replace(SCORING, **{change: {"max_new_tokens": 5, "max_seq_length": 64}[change]})
    if change == "system_prompt":
        system_prompt = "You are a terse chatbot."
    assert score_base(reference, examples, cache, config, system_prompt)[2] == "miss"


@pytest.mark.parametrize("change", ["prompt", "reference"])
def test_a_changed_example_recomputes_only_what_it_changes(tmp_path, tiny_model_dir, examples, change):
    """A new prompt needs its reply (the others are reused); an edited reference keeps its reply, and only its
    dialogue's perplexity part is measured again. Either way the scores are those of a full recomputation."""
    turns, held_out = examples

    def score(anchor_set, cache):
        scores, columns = evaluate.evaluate_model(str(tiny_model_dir), held_out, turns, SCORING, SYSTEM_PROMPT,
                                                  "base", extra={"anchor": anchor_set}, cache=cache)
        return scores, columns["anchor"]

    cache = generation_cache.open_cache(True, str(tmp_path / "cache"), experiment_id="")
    score(held_out, cache)
    last = held_out[-1]
    if change == "prompt":
        edited = chat_format.EvalExample(**{**last.__dict__, "history": [{"role": "user", "content": "Bonjour"}]})
    else:
        edited = chat_format.EvalExample(**{**last.__dict__, "reference": "Hi."})
    changed = [*held_out[:-1], edited]
    scores, columns = score(changed, cache)
    assert cache.outcomes()["base"] == {"held_out": "hit", "anchor": "partial"}
    assert cache.reused["base"]["anchor"][:2] == (len(held_out) - (change == "prompt"), len(held_out))
    full_scores, full_columns = score(changed, None)
    assert columns["base"] == full_columns["base"]
    assert scores == pytest.approx(full_scores, rel=1e-6)  # a part measured in another batch: the last bits


def test_a_reply_is_found_again_in_another_set(tmp_path, tiny_model_dir, examples):
    """Tonight's held-out replies are a later night's memory set: the same prompts, under another set's name."""
    cache = generation_cache.open_cache(True, str(tmp_path / "cache"), experiment_id="")
    turns, held_out = examples
    evaluate.evaluate_model(str(tiny_model_dir), held_out, turns, SCORING, SYSTEM_PROMPT, "base", cache=cache)
    later = generation_cache.open_cache(True, str(tmp_path / "cache"), experiment_id="")
    _, columns = evaluate.evaluate_model(str(tiny_model_dir), held_out[:2], turns, SCORING, SYSTEM_PROMPT, "base",
                                         extra={"memory": held_out[2:]}, cache=later)
    assert later.reused["base"]["memory"][:2] == (len(held_out) - 2, len(held_out) - 2)
    assert later.counts() == {"hits": len(held_out), "misses": 0}  # no reply generated
    # The held-out perplexity is of whole conversations, a memory example's of its prompt and reply: measured.
    assert later.outcomes()["base"] == {"held_out": "hit", "memory": "partial"}


def test_bookkeeping_beside_the_weights_is_not_part_of_their_digest(tmp_path, tiny_model_dir):
    model = Path(model_copy(tiny_model_dir, tmp_path / "model"))
    before = generation_cache.weights_digest(str(model))
    outputs.write_json(model / "train_config.json", {"train.system_prompt": "other"})  # in the settings instead
    outputs.write_json(model / "manifest.json", {"data_digest": "other"})
    assert generation_cache.weights_digest(str(model)) == before
    (model / "tokenizer_config.json").write_text((model / "tokenizer_config.json").read_text() + " ")
    assert generation_cache.weights_digest(str(model)) != before


def _damage_by_truncation(entry: Path, other: Path) -> None:
    entry.write_bytes(entry.read_bytes()[: len(entry.read_bytes()) // 2])  # an upload cut off


def _damage_by_editing_a_reply(entry: Path, other: Path) -> None:
    content = json.loads(entry.read_text())
    content["replies"][next(iter(content["replies"]))] = "an edited reply"
    entry.write_text(json.dumps(content))


def _damage_by_another_keys_entry(entry: Path, other: Path) -> None:
    shutil.copyfile(other, entry)  # a whole, valid entry, but of other settings


@pytest.mark.parametrize("damage", [_damage_by_truncation, _damage_by_editing_a_reply, _damage_by_another_keys_entry])
def test_a_damaged_entry_is_recomputed_with_a_warning_never_trusted(tmp_path, tiny_model_dir, examples, damage,
                                                                   caplog):
    cache = generation_cache.open_cache(True, str(tmp_path / "cache"), experiment_id="")
    score_base(tiny_model_dir, examples, cache, dataclasses.replace(SCORING, max_new_tokens=3))
    (other,) = (tmp_path / "cache" / "entries").glob("*/*.json")
    scores, columns, _ = score_base(tiny_model_dir, examples, cache)
    (entry,) = set((tmp_path / "cache" / "entries").glob("*/*.json")) - {other}
    damage(entry, other)

    assert score_base(tiny_model_dir, examples, cache) == (scores, columns, "miss")
    assert any(r.levelname == "WARNING" and entry.name in r.getMessage() for r in caplog.records)
    assert score_base(tiny_model_dir, examples, cache) == (scores, columns, "hit")  # rewritten whole


def test_entries_in_s3_are_found_by_another_process(s3_server):
    bucket = s3_server()
    key = generation_cache.Key("weights", {"max_new_tokens": 6})
    computed = generation_cache.Known({"p1": "你好。", "p2": "Hello there."}, {"d1": [12.5, 4]})
    generation_cache.open_cache(True, f"s3://{bucket}/cache", experiment_id="").put(key, computed)
    reader = generation_cache.open_cache(True, f"s3://{bucket}/cache", experiment_id="")  # a fresh client
    assert reader.known(key, "base") == computed
    assert reader.known(generation_cache.Key("weights", {"max_new_tokens": 7}), "base") == generation_cache.Known()


def test_a_store_that_fails_is_asked_once_and_the_evaluation_goes_on(s3_server, tiny_model_dir, examples, caplog):
    cache = generation_cache.open_cache(True, "s3://no-such-bucket/cache", experiment_id="")
    scores, columns, outcome = score_base(tiny_model_dir, examples, cache)
    assert outcome == "miss" and "bucket does not exist" in cache.unavailable
    assert (scores, columns) == score_base(tiny_model_dir, examples, None)[:2]  # computed as without a cache
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "not asking this store again" in warnings[0]  # the put was not tried
    assert cache.tags()["evaluate.cache.unavailable"] == cache.unavailable


def test_a_cached_champion_is_not_downloaded_and_scores_as_on_its_own_night(tmp_path, tiny_model_dir, monkeypatch):
    """Promote records the candidate's weights digest on its version; the next night finds the champion's replies
    by it without fetching the weights. A version without the digest is downloaded and hashed: the same entries."""
    from pipeline import promote
    from pipeline.tracking import registry

    project = ProjectConfig(runs_root=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                            artifact_root=str(tmp_path / "artifacts"), base_model=str(tiny_model_dir),
                            registered_model="chat")
    config = evaluate.EvaluateConfig(max_examples=8, max_new_tokens=6, batch_size=4, min_examples_per_language=None,
                                     anchor=ANCHOR)
    data = dataset(tmp_path)
    first, second = (model_copy(tiny_model_dir, tmp_path / f"m{n}", nudge) for n, nudge in ((1, 0.05), (2, 0.1)))
    downloads = []
    real_download = registry.download_weights
    monkeypatch.setattr(registry, "download_weights", lambda *a: downloads.append(a[1]) or real_download(*a))

    night_one = evaluate.run(config, project, RunContext("2026-11-22", "night-1"), data, first)
    gate = promote.PromoteConfig(max_regression={}, min_examples=2)  # 8 held-out replies here
    promote.run(gate, project, RunContext("2026-11-22", "night-1"), str(night_one))
    client = MlflowClient(project.tracking_uri)
    (version,) = registry.versions(client, "chat")
    one = json.loads((night_one / "evaluation.json").read_text())
    assert version.tags[registry.WEIGHTS_DIGEST_TAG] == one["cache"]["model_digests"]["candidate"]
    client.set_registered_model_alias("chat", registry.CHAMPION, version.version)  # whatever the gate decided

    two, _, _ = evaluation(evaluate.run(config, project, RunContext("2026-11-23", "night-2"), data, second))
    assert downloads == []
    assert two["cache"]["outcomes"]["champion"] == {"held_out": "hit", "anchor": "hit"}
    assert two["scores"]["champion"] == one["scores"]["candidate"] and two["champion_version"] == str(version.version)

    client.delete_model_version_tag("chat", version.version, registry.WEIGHTS_DIGEST_TAG)  # registered before digests
    three, _, _ = evaluation(evaluate.run(config, project, RunContext("2026-11-24", "night-3"), data, second))
    assert downloads == [str(version.version)]
    assert three["cache"]["model_digests"]["champion"] == one["cache"]["model_digests"]["candidate"]
    assert three["cache"]["outcomes"]["champion"] == {"held_out": "hit", "anchor": "hit"}
    assert three["scores"]["champion"] == one["scores"]["candidate"]
