"""Batched greedy decoding for evaluation and serving.

Prompts are sorted by length (less padding), left-padded (so every row's next token sits at the end) and decoded
with the KV cache until the end-of-turn token. In fp32 this gives the same text as one-prompt-at-a-time decoding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline import chat_data, models


@torch.inference_mode()
def generate_replies(
    model, tokenizer, histories: list[list[dict]], system_prompt: str | None = None,
    max_new_tokens: int = 48, batch_size: int = 16, on_batch: Callable[..., None] | None = None,
) -> list[str]:
    """Greedy replies, in the order of `histories`. on_batch(batch=, batches=, replies=, total=) after each batch
    (evaluation's progress on the console)."""
    prompts = [tokenizer(chat_data.render_prompt(tokenizer, h, system_prompt), add_special_tokens=False)["input_ids"]
               for h in histories]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    eot = models.end_of_turn_id(tokenizer)
    replies: list[str] = [""] * len(prompts)
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = chat_data.pad_batch([{"input_ids": prompts[i]} for i in chunk], tokenizer.pad_token_id, "left")
        output = model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=max_new_tokens,
            do_sample=False, eos_token_id=eot, pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        for row, index in enumerate(chunk):
            replies[index] = tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
        if on_batch is not None:
            on_batch(batch=start // batch_size + 1, batches=-(-len(order) // batch_size),
                     replies=start + len(chunk), total=len(order))
    return replies
