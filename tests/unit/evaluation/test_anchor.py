"""The anchor set: drawn deterministically, frozen by its digest, and never trained on."""

import io
import json

import pandas as pd
import pytest
from paths import REPO

from pipeline.config import ConfigError, load_section
from pipeline.evaluate import EvaluateConfig
from pipeline.evaluation import EvaluationSetError, anchor

CHITCHAT = {"package": "chitchat_dataset", "size": 8, "seed": 0}


@pytest.fixture(scope="module")
def chitchat():
    config = anchor.settings(CHITCHAT)
    return config, anchor.read_conversations(config)


def test_draw_is_deterministic_short_and_english(chitchat):
    config, conversations = chitchat
    first, again = anchor.draw(conversations, config), anchor.draw(conversations, config)
    assert first == again and len(first) == 8
    assert anchor.draw(conversations, anchor.settings({**CHITCHAT, "seed": 1})) != first
    for example in first:
        assert example.language == "en" and example.history[0]["role"] == "user"
        assert example.history[-1]["role"] == "user" and len(example.history) in (1, 3)
        assert len(example.reference.split()) >= anchor.MIN_REPLY_WORDS and example.reference.isascii()


@pytest.mark.parametrize("name", ["embedded.yaml", "tiny.yaml", "nights.yaml"])
def test_shipped_configs_pin_the_digest_of_their_anchor_set(name):
    config = load_section(REPO / "configs" / name, "evaluate", EvaluateConfig)
    anchor_set = anchor.load(anchor.settings(config.anchor))  # raises if the installed package drew another set
    assert anchor_set.digest == config.anchor["digest"] and len(anchor_set.examples) == config.anchor["size"]


def test_digest_mismatch_names_the_set_and_both_digests(chitchat):
    config, conversations = chitchat
    actual = anchor.digest(anchor.draw(conversations, config))
    wrong = anchor.settings({**CHITCHAT, "name": "chitchat-v1", "digest": "0" * 64})
    with pytest.raises(EvaluationSetError) as error:
        anchor.load(wrong)
    assert "'chitchat-v1'" in str(error.value) and f"expected digest {'0' * 64}, actual {actual}" in str(error.value)
    with pytest.raises(EvaluationSetError, match=f"no digest pinned.*{actual}"):
        anchor.load(anchor.settings(CHITCHAT))


def test_a_jsonl_file_is_a_source_too(tmp_path):
    path = tmp_path / "anchors.jsonl"
    rows = [{"id": f"c{i}", "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"},
                                          {"role": "assistant", "content": f"hello there, friend number {i}"}]}
            for i in range(3)]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    config = anchor.settings({"path": str(path), "size": 2, "seed": 0})
    examples = anchor.draw(anchor.read_conversations(config), config)
    assert [e.history for e in examples] == [[{"role": "user", "content": "hi"}]] * 2
    assert {e.reference for e in examples} < {row["messages"][2]["content"] for row in rows}


def test_config_rules_are_checked_when_the_config_loads(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("evaluate: {anchor: {package: chitchat_dataset, path: a.jsonl}}\n")
    with pytest.raises(ConfigError, match="exactly one of package and path"):
        load_section(path, "evaluate", EvaluateConfig)
    path.write_text("evaluate: {anchor: {package: chitchat_dataset, sise: 3}}\n")
    with pytest.raises(ConfigError, match=r"evaluate.anchor: unknown key\(s\) \['sise'\]"):
        load_section(path, "evaluate", EvaluateConfig)


def test_an_anchor_dialogue_in_the_training_split_is_refused(chitchat):
    config, conversations = chitchat
    examples = anchor.draw(conversations, config)
    anchor_set = anchor.AnchorSet("chitchat", examples, anchor.digest(examples), "package chitchat_dataset")
    leaked = examples[3]
    # The same exchange as ingest would store it: other case and punctuation, inside a longer conversation.
    texts = ["Hello!", leaked.history[-1]["content"].upper(), leaked.reference.rstrip(".!?") + " !", "bye"]
    turns = pd.DataFrame({"conversation_id": ["x"] * 4, "turn_index": range(4), "text": texts,
                          "role": ["user", "assistant"] * 2, "split": ["train"] * 4})
    with pytest.raises(EvaluationSetError, match=f"example {leaked.conversation_id} .* 'train' split"):
        anchor.assert_not_trained_on(anchor_set, turns)
    with pytest.raises(EvaluationSetError, match="'replay' split"):  # a replay source's: trained on as replayed
        anchor.assert_not_trained_on(anchor_set, turns.assign(split="replay"))
    anchor.assert_not_trained_on(anchor_set, turns.assign(split="test"))  # held out: allowed
    anchor.assert_not_trained_on(anchor_set, turns.iloc[[0, 1, 3]])  # prompt without the reply after it: allowed


def test_the_report_charts_the_anchor_set_and_its_trend(tmp_path):
    from types import SimpleNamespace as Version

    from pipeline.promotion import report

    scores = {model: {"bleu": 3.0, "bleu_en": 3.0, "anchor_bleu": 1.0 + i, "anchor_rougeL": 9.0, "anchor_chrf1": 14.0,
                      "anchor_similarity": 20.0 + i} for i, model in enumerate(["candidate", "base"])}
    (tmp_path / "evaluation.json").write_text(json.dumps({"scores": scores, "examples": 1, "data_digest": "abc" * 8,
        "anchor": {"name": "chitchat", "digest": "d" * 64, "source": "package chitchat_dataset", "examples": 1}}))
    for name in ("samples.parquet", "samples_anchor.parquet"):
        pd.DataFrame({"language": ["en"], "prompt": ["hi"], "reference": ["hello there"], "candidate": ["hey"],
                      "candidate_similarity": [50.0]}).to_parquet(tmp_path / name)
    history = [Version(version=1, tags={"metric.bleu": "2.0"}),  # registered before anchor tags: a gap
               Version(version=2, tags={"metric.anchor_bleu": "0.5", "metric.anchor_similarity": "18.0"})]
    ctx = Version(dag_id="dag", run_date="2026-11-22", run_id="night-3", run_type="scheduled")
    decision = Version(promote=True, reason="bleu 3.0 beats base", checks=[])
    page = report.write(tmp_path / "report.html", tmp_path, decision, Version(version=3, tags={}), history,
                                   ctx).read_text()
    assert "Anchor set: chitchat" in page and "Anchor set generations" in page
    trend_html = page[page.rindex("<table", 0, page.index("vs latest champion")) :]
    trend = pd.read_html(io.StringIO(trend_html), index_col=0)[0]
    assert float(trend.loc["anchor_similarity", "vs latest champion"]) == 2.0  # candidate 20.0 vs v2's 18.0
    assert trend.loc["anchor_bleu", "v1"] == "-" and float(trend.loc["anchor_bleu", "vs oldest charted"]) == 0.5


def test_outside_the_feed_the_set_shares_no_conversation_with_the_nights():
    """The dated feed (ops/chat_feed.py) carries the same package's other conversations; drawn with
    outside_feed_only, no anchor conversation can reach a night's data."""
    config = anchor.settings({**CHITCHAT, "size": 64, "outside_feed_only": True})
    with pytest.raises(EvaluationSetError, match=r"outside the feed, size 64, seed 0\): no digest pinned") as error:
        anchor.load(config)
    digest = str(error.value).rsplit(" ", 1)[-1]
    anchor_set = anchor.load(anchor.settings({**CHITCHAT, "size": 64, "outside_feed_only": True, "digest": digest}))
    ids = {example.conversation_id.split("#")[0] for example in anchor_set.examples}
    assert len(ids) == 64 and all(anchor.outside_feed(cid) for cid in ids)
