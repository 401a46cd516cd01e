"""The rendering path: templates that are not literal text around each message are rendered once per conversation,
and the labels read from that one rendering are the per-turn reference's."""


import pytest
from per_turn_reference import assert_same, fast_path_only, per_turn

from pipeline.training.samples import template_layout


@pytest.mark.parametrize("max_length, system_prompt", [(256, None), (32, "Be brief.")])
def test_rendering_path_matches_per_turn(tokenizer, chatterbot, monkeypatch, max_length, system_prompt):
    """Templates that are not literal text around contents are rendered once per conversation."""
    monkeypatch.setattr(template_layout.ChatLayout, "probe", classmethod(lambda cls, tokenizer: None))
    tokenized = fast_path_only(monkeypatch, chatterbot, "train", tokenizer, max_length, system_prompt)
    assert tokenized.rendered == len(tokenized.conversation_ids) + len(tokenized.replyless)
    assert_same(tokenized, *per_turn(chatterbot, "train", tokenizer, max_length, system_prompt), max_length)
