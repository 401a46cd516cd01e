"""The chat template is checked before training: the tiny model's ChatML passes, and so does one that drops reasoning
blocks from earlier turns (Qwen3-style: replies found by search); a template that refuses a system message, one that
rewrites earlier replies beyond finding, one whose replies do not end with the token generation stops on, and a
tokenizer without a template are refused, each named."""

import pytest

from pipeline.model import loading, template_check
from pipeline.model.template_check import TemplateError

TURNS = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
PROMPT = "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
NO_SYSTEM = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
             + TURNS + PROMPT)
# Qwen3's behaviour: an assistant turn before the last user message loses its reasoning block.
DROPS_REASONING = (
    "{% set last_user = namespace(i=0) %}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% set last_user.i = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}{% set content = m['content'] %}"
    "{% if m['role'] == 'assistant' and loop.index0 < last_user.i and '</think>' in content %}"
    "{% set content = content.split('</think>')[-1].lstrip('\n') %}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ content }}<|im_end|>\n{% endfor %}" + PROMPT)
# Earlier replies replaced by a placeholder: nothing to find them by.
ELIDES_HISTORY = DROPS_REASONING.replace("{% set content = content.split('</think>')[-1].lstrip('\n') %}",
                                         "{% set content = '(earlier reply)' %}")
# Mistral's [INST] layout: a system message folded into the first user turn, replies closed by eos_token.
INST = ("{{ bos_token }}{% set system = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
        "{% for m in messages if m['role'] != 'system' %}{% if m['role'] == 'user' %}[INST] "
        "{{ (system + '\n\n' if system and loop.first else '') + m['content'] }} [/INST]"
        "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
NO_END_MARKER = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}" \
                "{% if add_generation_prompt %}assistant: {% endif %}"


@pytest.fixture
def tokenizer(tiny_model_dir):
    return loading.load_tokenizer(str(tiny_model_dir))


def test_chatml_passes_with_and_without_a_system_prompt(tokenizer):
    template_check.check(tokenizer, "You are a helpful chatbot.")
    template_check.check(tokenizer, None)


def test_an_inst_template_that_folds_the_system_message_into_the_first_turn_passes(tokenizer):
    tokenizer.chat_template = INST
    template_check.check(tokenizer, "You are a helpful chatbot.")


def test_a_template_that_refuses_a_system_message_is_named_with_the_fix(tokenizer):
    tokenizer.chat_template = NO_SYSTEM
    with pytest.raises(TemplateError, match=r"refuses a system message .*System role not supported.*"
                                            r"train.system_prompt: null"):
        template_check.check(tokenizer, "You are a helpful chatbot.")
    template_check.check(tokenizer, None)  # without one it is usable


def test_a_template_that_drops_reasoning_from_earlier_turns_passes(tokenizer):
    tokenizer.chat_template = DROPS_REASONING
    template_check.check(tokenizer, None)


def test_a_template_that_rewrites_earlier_replies_beyond_finding_is_named(tokenizer):
    tokenizer.chat_template = ELIDES_HISTORY
    assert "(earlier reply)" in tokenizer.apply_chat_template(template_check.PROBE, tokenize=False)
    with pytest.raises(TemplateError, match=r"renders an earlier turn differently once later turns follow and a "
                                            r"reply cannot be found .*message 2 \(assistant\)"):
        template_check.check(tokenizer, None)


def test_replies_that_do_not_end_with_the_stop_token_are_named(tokenizer):
    tokenizer.chat_template = NO_END_MARKER
    with pytest.raises(TemplateError, match=r"does not end a reply with '<\|im_end\|>'"):
        template_check.check(tokenizer, None)


def test_a_tokenizer_without_a_template_is_named(tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(TemplateError, match="has no chat template"):
        template_check.check(tokenizer, None)
