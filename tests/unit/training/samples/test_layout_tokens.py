"""Token ids and labels from the layout alone: a batch whose layout tokens differ from its rendering is rendered
instead, and nothing wrong reaches the samples."""


from per_turn_reference import assert_same, per_turn

from pipeline.training.samples import layout_tokens, tokenization


def test_a_batch_whose_layout_tokens_differ_from_its_rendering_is_rendered(tiny, chatterbot, monkeypatch, caplog):
    """One conversation per batch is tokenized both ways; where a template does what the probes did not show,
    the batch is rendered, and nothing wrong reaches the samples."""
    assemble = layout_tokens.LayoutEncoder.assemble

    def unlearned(self, segmented, encodings):
        blocks = assemble(self, segmented, encodings)
        blocks.learned[:] = False
        return blocks

    monkeypatch.setattr(layout_tokens.LayoutEncoder, "assemble", unlearned)
    tokenized = tokenization.tokenize_split(chatterbot, "train", tiny, 256, batch_size=300)
    assert tokenized.rendered == len(tokenized.conversation_ids) + len(tokenized.replyless)
    assert "differs from its rendering" in caplog.text
    assert_same(tokenized, *per_turn(chatterbot, "train", tiny, 256), 256)
