"""The anchor set: a fixed sample of outside dialogues that every night's models are scored on, beside the rolling
held-out split.

The held-out split moves with each night's data, so its scores move even when the model does not. The anchor set
never moves: it is drawn from a source the pipeline never ingests (default: the Chit Chat Challenge conversations
in the `chitchat-dataset` wheel, English, human-human), by a seeded rule, and frozen by the sha256 of its canonical
JSON. A changed package or file is an error (not a silent shift of every score), and so is an anchor dialogue that
reached the training split: scores on data the model was trained on say nothing about it. Not a command: evaluate
calls `load` and `assert_not_trained_on`; its scores are `anchor_<metric>` beside the held-out ones.

    evaluate:
      anchor: {package: chitchat_dataset, size: 32, seed: 0, digest: <sha256>}   # or path: anchors.jsonl

A JSONL file holds one conversation a line: {"id": ..., "language": "en", "messages": [{"role", "content"}, ...]}.
Chit Chat conversations are turns of two people; the first speaker is the user, the other the assistant.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipeline.config import build
from pipeline.data import cleaning, table
from pipeline.evaluation import EvaluationSetError
from pipeline.model.chat_format import EvalExample

MAX_TURN_CHARS = 300  # a longer turn in the prompt or reply disqualifies a dialogue: generation stays cheap
MIN_REPLY_WORDS = 4  # "lol ok" says nothing about a model, and short greetings also occur in the training corpus
OUTSIDE_EVERY = 10  # 1 conversation in 10 of a package (by a stable hash of its id) never enters the dated feed


def outside_feed(conversation_id: str) -> bool:
    """Whether the dated feed (ops/chat_feed.py) leaves this conversation out, keeping it for the anchor set: the
    rule depends on the id alone, so the feed and the anchor agree whatever else changes."""
    return int(hashlib.sha256(conversation_id.encode("utf-8")).hexdigest()[:8], 16) % OUTSIDE_EVERY == 0


@dataclass(frozen=True)
class AnchorConfig:
    name: str = field(default="chitchat", metadata={"help": "Names the set in errors, MLflow params and reports."})
    package: str | None = field(
        default=None, metadata={"help": "Installed package whose dataset.json is in the Chit Chat Challenge format."}
    )
    path: str | None = field(default=None, metadata={"help": "Or a JSONL file of conversations (see module doc)."})
    size: int = field(default=32, metadata={"help": "Examples in the set (each costs one reply per model)."})
    seed: int = field(default=0, metadata={"help": "Seed of the draw; a new seed is a new set (and digest)."})
    history_turns: int = field(default=3, metadata={"help": "Turns of context before the reply (odd: starts with user)."})
    outside_feed_only: bool = field(default=False, metadata={
        "help": "Draw only from the conversations the dated feed never carries (outside_feed): needed when the "
                "same package also feeds the nights (ops/chat_feed.py), so the set stays outside them."})
    digest: str | None = field(default=None, metadata={"help": "sha256 of the drawn set; a mismatch stops the stage."})

    def __post_init__(self):
        if (self.package is None) == (self.path is None):
            raise ValueError("anchor: set exactly one of package and path")
        if self.size < 1 or self.history_turns < 1 or self.history_turns % 2 == 0:
            raise ValueError("anchor: size must be >= 1 and history_turns odd and >= 1")

    def source(self) -> str:
        return f"package {self.package}" if self.package else f"file {self.path}"


@dataclass(frozen=True)
class AnchorSet:
    name: str
    examples: list[EvalExample]
    digest: str
    source: str


def settings(values: dict) -> AnchorConfig:
    """The `evaluate.anchor` mapping as a typed config, unknown keys and wrong types rejected (config.build)."""
    return build(AnchorConfig, values, "evaluate.anchor")


def load(config: AnchorConfig) -> AnchorSet:
    """Draw the set and check it against the pinned digest, before any model is scored."""
    conversations = read_conversations(config)
    if config.outside_feed_only:
        conversations = [c for c in conversations if outside_feed(c[0])]
    examples = draw(conversations, config)
    actual = digest(examples)
    where = (f"anchor set {config.name!r} ({config.source()}{', outside the feed' if config.outside_feed_only else ''}, "
             f"size {config.size}, seed {config.seed})")
    if config.digest is None:
        raise EvaluationSetError(f"{where}: no digest pinned; a set that may change is no anchor. "
                                 f"Pin evaluate.anchor.digest: {actual}")
    if actual != config.digest:
        raise EvaluationSetError(f"{where} changed: expected digest {config.digest}, actual {actual}. Its source "
                                 "or the drawing rule changed; scores would not compare with earlier nights. Restore "
                                 "the source, or start a new anchor series with a new name and digest.")
    return AnchorSet(config.name, examples, actual, config.source())


def read_conversations(config: AnchorConfig) -> list[tuple[str, str, list[dict]]]:
    """(id, language, messages) of every conversation of the source, sorted by id."""
    if config.package:
        raw = json.loads(resources.files(config.package).joinpath("dataset.json").read_text(encoding="utf-8"))
        found = [(cid, "en", _chitchat_messages(conversation["messages"])) for cid, conversation in raw.items()]
    else:
        lines = Path(config.path).read_text(encoding="utf-8").splitlines()
        found = [(str(row.get("id", number)), row.get("language", "en"),
                  [m for m in row["messages"] if m["role"] != "system"])  # evaluate adds the model's own
                 for number, row in enumerate(map(json.loads, filter(str.strip, lines)))]
    return sorted(found, key=lambda item: item[0])


def _chitchat_messages(groups: list[list[dict]]) -> list[dict]:
    """Consecutive messages of one sender are one turn; the first sender is the user."""
    texts = [" ".join(message["text"].strip() for message in group) for group in groups if group]
    return [{"role": "user" if index % 2 == 0 else "assistant", "content": text} for index, text in enumerate(texts)]


def draw(conversations: list[tuple[str, str, list[dict]]], config: AnchorConfig) -> list[EvalExample]:
    """`size` examples: conversations in a seeded order, one seeded assistant reply of each that qualifies."""
    rng = random.Random(config.seed)
    order = list(range(len(conversations)))
    rng.shuffle(order)
    examples = []
    for position in order:
        cid, language, messages = conversations[position]
        replies = [index for index in range(1, len(messages)) if _qualifies(messages, index, config.history_turns)]
        if replies:
            index = rng.choice(replies)
            start = index - min(config.history_turns, index)
            start += messages[start]["role"] != "user"  # the context opens with a user turn
            examples.append(EvalExample(f"{cid}#{index}", language, messages[start:index], messages[index]["content"]))
        if len(examples) == config.size:
            return examples
    raise EvaluationSetError(f"anchor set {config.name!r} ({config.source()}): only {len(examples)} qualifying "
                             f"replies, size {config.size} asked")


def _qualifies(messages: list[dict], index: int, history_turns: int) -> bool:
    reply, prompt = messages[index], messages[index - 1]
    context = messages[max(0, index - history_turns) : index + 1]
    return (reply["role"] == "assistant" and prompt["role"] == "user"
            and len(reply["content"].split()) >= MIN_REPLY_WORDS
            # ASCII-only keeps the set English and free of emoji that the tokenizers split into bytes
            and all(0 < len(m["content"]) <= MAX_TURN_CHARS and m["content"].isascii() for m in context))


def digest(examples: list[EvalExample]) -> str:
    """sha256 of the set's canonical JSON (sorted keys, no whitespace): what `anchor.digest` pins."""
    canonical = json.dumps([dataclasses.asdict(e) for e in examples], sort_keys=True, ensure_ascii=False,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


TRAINED_SPLITS = (table.TRAIN, table.REPLAY)


def assert_not_trained_on(anchor: AnchorSet, turns: pd.DataFrame, splits: tuple[str, ...] = TRAINED_SPLITS) -> None:
    """Raise if an anchor exchange (its last prompt followed by its reference, compared as ingest's near-duplicate
    text: lower case, letters and digits) occurs as consecutive turns of a conversation in a split trained on
    (train, and replay: what train.replay may draw)."""
    rows = turns[turns["split"].isin(splits)].sort_values(["conversation_id", "turn_index"])
    texts = _normalized(rows["text"].astype(str).tolist())
    same = (rows["conversation_id"].to_numpy()[1:] == rows["conversation_id"].to_numpy()[:-1]).tolist()
    split_of = rows["split"].tolist()
    trained = {(before, after): split for before, after, ok, split in
               zip(texts[:-1], texts[1:], same, split_of[1:], strict=True) if ok}
    prompts = _normalized([e.history[-1]["content"] for e in anchor.examples])
    references = _normalized([e.reference for e in anchor.examples])
    for example, prompt, reference in zip(anchor.examples, prompts, references, strict=True):
        if (prompt, reference) in trained:
            raise EvaluationSetError(
                f"anchor set {anchor.name!r}: example {example.conversation_id} (prompt "
                f"{example.history[-1]['content']!r} -> reply {example.reference!r}) is in the "
                f"{trained[prompt, reference]!r} split of "
                "the dataset; the anchor set must never be trained on. Remove that source from ingest or redraw the set.")


def _normalized(texts: list[str]) -> list[str]:
    return cleaning.near_duplicate_text(pa.array(texts, pa.string())).to_pylist()
