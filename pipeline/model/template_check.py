"""Whether a tokenizer's chat template behaves as training and evaluation need, checked before any training step.

    template_check.check(tokenizer, system_prompt)     # raises TemplateError naming the behaviour found

Training finds each assistant reply by rendering the conversation up to it (chat_format._assistant_spans), and
evaluation prompts with the generation prompt and stops on the end-of-turn token (loading.end_of_turn_id). Four
behaviours of real templates break that, each named in the error with what to do:

  no template         the tokenizer has no chat_template (a base model, not a chat model)
  system refused      rendering a system message raises (Gemma-style); train.system_prompt: null then renders
                      without one
  reply not found     a template that renders an earlier turn differently once later turns follow (Qwen3-style:
                      reasoning blocks dropped from the history) is searched for each reply, as said or without
                      its reasoning block (chat_format._spans_by_search); a reply found neither way is refused
  no end of turn      the reply is not followed by the token generation stops on, so generated replies would run on

The probe is a two-exchange conversation with a reasoning-like block in the first reply; nothing else is assumed.
"""

from __future__ import annotations

from pipeline.model import chat_format, loading

PROBE = [{"role": "user", "content": "First question?"},
         {"role": "assistant", "content": "<think>\nA thought.\n</think>\n\nFirst answer."},
         {"role": "user", "content": "Second question?"},
         {"role": "assistant", "content": "Second answer."}]


class TemplateError(ValueError):
    """The chat template cannot be used as it is; the message names the behaviour and the fix."""


def check(tokenizer, system_prompt: str | None) -> None:
    name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(f"{name} has no chat template: a chat model's tokenizer carries one (tokenizer_config.json "
                            "chat_template); a base model cannot be fine-tuned on dialogues as is")
    messages = chat_format._with_system(PROBE, system_prompt)
    render = _renderer(tokenizer, name, system_prompt)
    full = render(messages)
    try:
        spans = chat_format._assistant_spans(tokenizer, messages, full)
    except ValueError as exc:
        raise TemplateError(
            f"{name}: its chat template renders an earlier turn differently once later turns follow and a reply "
            f"cannot be found in the whole conversation ({exc}). Rule: a reply is located by rendering the turns "
            "before it or, where the template rewrites history (Qwen3-style reasoning blocks), by finding it as "
            "said or without its reasoning block; use a template that renders replies as they were said") from exc
    answers = [full[start:stop] for start, stop in spans]
    if len(answers) != 2 or not all(r in a for a, r in zip(answers, ("First answer.", "Second answer."), strict=False)):
        raise TemplateError(f"{name}: its chat template's replies were located as {answers!r}, not as the probe's "
                            "two answers; use a template that renders replies as they were said")
    end = loading.end_of_turn_id(tokenizer)
    marker = tokenizer.convert_ids_to_tokens(end)
    reply = PROBE[-1]["content"]
    after = full[full.rindex(reply) + len(reply):]
    if marker not in after:
        raise TemplateError(f"{name}: its chat template does not end a reply with {marker!r}, the token generation "
                            f"stops on (loading.end_of_turn_id); it renders {after!r} after the reply, so generated "
                            "replies would run on to max_new_tokens")


def _renderer(tokenizer, name: str, system_prompt: str | None):
    def render(messages: list[dict], prompt: bool = False) -> str:
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        except Exception as exc:  # jinja's raise_exception(...) and template errors alike
            if system_prompt is not None and messages and messages[0]["role"] == "system":
                raise TemplateError(
                    f"{name}: its chat template refuses a system message ({exc}); set train.system_prompt: null to "
                    "train and evaluate without one (Gemma-style templates)") from exc
            raise TemplateError(f"{name}: its chat template fails on a plain user/assistant conversation: "
                                f"{type(exc).__name__}: {exc}") from exc
    return render
