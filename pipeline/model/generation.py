"""Batched decoding for evaluation (greedy) and serving (greedy, or sampled with a temperature).

Prompts are sorted by length (less padding), left-padded (so every row's next token sits at the end) and decoded
with the KV cache until the end-of-turn token. In fp32 greedy decoding gives the same text as one prompt at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.model import chat_format, loading


@torch.inference_mode()
def generate_replies(
    model, tokenizer, histories: list[list[dict]], system_prompt: str | None = None,
    max_new_tokens: int = 48, batch_size: int = 16, on_batch: Callable[..., None] | None = None,
    temperature: float = 0.0,
) -> list[str]:
    """Replies in the order of `histories`: greedy at temperature 0, else sampled. on_batch(batch=, batches=,
    replies=, total=) after each batch (evaluation's progress on the console)."""
    prompts = [tokenizer(chat_format.render_prompt(tokenizer, h, system_prompt), add_special_tokens=False)["input_ids"]
               for h in histories]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    eot = loading.end_of_turn_id(tokenizer)
    replies: list[str] = [""] * len(prompts)
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = chat_format.pad_batch([{"input_ids": prompts[i]} for i in chunk], tokenizer.pad_token_id, "left",
                                    model.device)
        output = model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=max_new_tokens,
            eos_token_id=eot, pad_token_id=tokenizer.pad_token_id,
            **({"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}),
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        for row, index in enumerate(chunk):
            replies[index] = decode_reply(tokenizer, new_tokens[row])
        if on_batch is not None:
            on_batch(batch=start // batch_size + 1, batches=-(-len(order) // batch_size),
                     replies=start + len(chunk), total=len(order))
    return replies


def decode_reply(tokenizer, token_ids) -> str:
    """The reply's text. A reply cut at max_new_tokens can end inside a multi-byte character (one Chinese character
    is often 2-3 byte-level tokens); its incomplete bytes decode to U+FFFD, which is dropped, not shown. A reasoning
    block the model wrote first is not part of the reply (its markers are added tokens, not special ones, in
    Qwen3-style tokenizers, so skip_special_tokens keeps them)."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True).rstrip("\ufffd").strip()
    if text.startswith(chat_format.THINK_START) and chat_format.THINK_END in text:
        text = text.split(chat_format.THINK_END, 1)[1].strip()
    return text
