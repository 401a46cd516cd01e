"""Whether a tokenizer's chat template behaves as training and evaluation need, checked before any training step.

    template_check.check(tokenizer, system_prompt)     # raises TemplateError naming the behaviour found

Training finds each assistant reply by rendering the conversation up to it (chat_format._assistant_spans), and
evaluation prompts with the generation prompt and stops on the end-of-turn token (loading.end_of_turn_id). Four
behaviours of real templates break that, each named in the error with what to do:

  no template         the tokenizer has no chat_template (a base model, not a chat model)
  system refused      rendering a system message raises (Gemma-style); train.system_prompt: null then renders
                      without one
  history rewritten   an earlier turn renders differently once later turns follow (Qwen3-style: reasoning
                      blocks dropped from the history), so replies cannot be located by rendering
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
    offset = len(messages) - len(PROBE)
    for index in (offset + 1, offset + 3):  # the two replies
        before, through = render(messages[:index], prompt=True), render(messages[: index + 1])
        if not (full.startswith(before) and full.startswith(through)):
            shown = before if not full.startswith(before) else through
            at = next((i for i, (a, b) in enumerate(zip(shown, full, strict=False)) if a != b), len(shown))
            raise TemplateError(
                f"{name}: its chat template renders turn {index - offset + 1} differently once later turns follow "
                f"(history rewritten, e.g. reasoning blocks dropped from earlier replies, Qwen3-style): "
                f"{shown[at:at + 60]!r} alone vs {full[at:at + 60]!r} in the whole conversation. Rule: a reply is "
                "located by rendering the turns before it; use a template that renders history as it was said")
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
