"""Long conversations become windows at turn boundaries that fit max_seq_length, every reply in exactly one of
them, rendered and tokenized like any conversation; short ones are left alone. On the real feed's long chit-chat
sessions (tests/feed_nights.py) with the tiny and the real SmolLM2 tokenizer."""

import pandas as pd
import pytest
from feed_nights import NIGHTS

from pipeline.data import partitions, table
from pipeline.model import chat_format
from pipeline.storage import outputs
from pipeline.training.samples import tokenization, windows

SYSTEM = "You are a helpful chatbot."


def test_windows_open_at_a_user_turn_close_after_a_reply_and_cover_each_reply_once():
    roles = ["user", "assistant"] * 6
    assert windows.cut(roles, [10] * 12, budget=45) == [(0, 4), (4, 8), (8, 12)]
    assert windows.cut(roles, [10] * 12, budget=1000) == [(0, 12)]
    long_middle = [10, 10, 10, 10, 80, 90, 10, 10, 10, 10, 10, 10]
    assert windows.cut(roles, long_middle, budget=45) == [(0, 4), (4, 6), (6, 10), (10, 12)]  # one exchange alone
    ragged = ["user", "user", "assistant", "user", "assistant", "assistant", "user"]  # merged turns, a trailing user
    assert windows.cut(ragged, [10] * 7, budget=25) == [(0, 3), (3, 6)]


@pytest.fixture(scope="module")
def long_sessions(feed_nights):
    turns = partitions.read(str(outputs.partition_dir(feed_nights, table.DATASET, NIGHTS[0]))).turns
    return turns


def test_every_window_fits_and_every_reply_is_trained_once(long_sessions, tokenizer):
    windowed, counts = windows.split_long(long_sessions, "train", tokenizer, 256, SYSTEM)
    assert counts["data/train_windowed_conversations"] > 0 and counts["data/train_windows"] > \
        counts["data/train_windowed_conversations"]
    before = long_sessions[(long_sessions["split"] == "train") & (long_sessions["role"] == "assistant")]
    after = windowed[(windowed["split"] == "train") & (windowed["role"] == "assistant")]
    assert sorted(before["text"]) == sorted(after["text"])  # each reply once, none lost
    assert windowed[windowed["split"] != "train"].reset_index(drop=True).equals(
        long_sessions[long_sessions["split"] != "train"].reset_index(drop=True))
    tokenized = tokenization.tokenize_split(windowed, "train", tokenizer, None, SYSTEM)  # no truncation: true sizes
    ids = tokenized.conversation_ids
    sizes = dict(zip(ids, tokenized.lengths.tolist(), strict=True))
    windows_only = [cid for cid in ids if "#w" in cid]
    one_exchange = {cid for cid in windows_only
                    if (windowed.loc[windowed["conversation_id"] == cid, "role"] == "assistant").sum() == 1}
    assert all(sizes[cid] <= 256 for cid in windows_only if cid not in one_exchange)
    for cid in windows_only:
        roles = windowed.loc[windowed["conversation_id"] == cid].sort_values("turn_index")["role"].tolist()
        assert roles[0] == "user" and roles[-1] == "assistant"


def test_windows_are_conversations_of_their_own_and_short_ones_are_untouched(long_sessions, tiny):
    windowed, _ = windows.split_long(long_sessions, "train", tiny, 256, SYSTEM)
    ids = set(windowed["conversation_id"])
    parents = {cid.split("#w")[0] for cid in ids if "#w" in cid}
    assert parents and not parents & ids  # the long original is replaced by its windows
    short = set(long_sessions["conversation_id"]) - parents
    assert short <= ids
    dialogues = {cid: messages for cid, _, messages in chat_format.conversations(windowed, "train")}
    assert all(m[0]["role"] == "user" for m in dialogues.values())
    again, _ = windows.split_long(windowed, "train", tiny, 256, SYSTEM)
    assert again.equals(windowed)  # windows fit: nothing more to cut


def test_nothing_long_nothing_changed(chatterbot, tiny):
    same, counts = windows.split_long(chatterbot, "train", tiny, 4096, SYSTEM)
    assert same is chatterbot and counts == {"data/train_windowed_conversations": 0, "data/train_windows": 0}
    assert isinstance(same, pd.DataFrame)


def test_a_kept_system_message_opens_every_window_and_replaces_the_system_prompt(long_sessions, tiny):
    train = long_sessions[long_sessions["split"] == "train"]
    longest = train["conversation_id"].value_counts().index[0]
    session = train[train["conversation_id"] == longest]
    persona = session.iloc[:1].assign(turn_index=-1, role="system", text="You are Ada, a patient listener.")
    windowed, counts = windows.split_long(pd.concat([session, persona]), "train", tiny, 256, SYSTEM)
    assert counts["data/train_windows"] > 1
    for cid, group in windowed.groupby("conversation_id"):
        ordered = group.sort_values("turn_index")
        assert ordered[["turn_index", "role"]].iloc[:2].values.tolist() == [[-1, "system"], [0, "user"]], cid
    assert sorted(windowed.loc[windowed["role"] == "assistant", "text"]) == \
        sorted(session.loc[session["role"] == "assistant", "text"])  # each reply once
    tokenized = tokenization.tokenize_split(windowed, "train", tiny, None, SYSTEM)
    starts = [int(s) for s in tokenized.lengths.cumsum() - tokenized.lengths]
    texts = [tiny.decode(tokenized.input_ids[a:a + n]) for a, n in zip(starts, tokenized.lengths.tolist(), strict=True)]
    assert all("You are Ada" in t and SYSTEM not in t for t in texts)  # the conversation's own, not the config's
    multi = [cid for cid in tokenized.conversation_ids
             if (windowed.loc[windowed["conversation_id"] == cid, "role"] == "assistant").sum() > 1]
    assert all(n <= 256 for cid, n in zip(tokenized.conversation_ids, tokenized.lengths.tolist(), strict=True)
               if cid in multi)
