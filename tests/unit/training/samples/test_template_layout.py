"""A chat template read as literal text around each message: ChatML (SmolLM2) has one; templates that rewrite
contents or add no marker tokens have none."""

import copy

from tiny_model import CHATML

from pipeline.training.samples import template_layout


def test_layout_of_chatml_and_templates_that_have_none(tiny, smollm2):
    layout = template_layout.ChatLayout.probe(smollm2)
    messages = [{"role": "user", "content": " hi\n"}, {"role": "assistant", "content": ""}]
    assert layout.render(messages) == smollm2.apply_chat_template(messages, tokenize=False)
    assert layout.opening.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert layout.before["assistant"] == "<|im_start|>assistant\n" and layout.after["assistant"] == "<|im_end|>\n"
    for template in (CHATML.replace("message['content']", "message['content'] | trim"),  # rewrites contents
                     CHATML.replace("'<|im_end|>'", "''").replace("'<|im_start|>'", "''")):  # no added tokens
        changed = copy.deepcopy(tiny)
        changed.chat_template = template
        assert template_layout.ChatLayout.probe(changed) is None
