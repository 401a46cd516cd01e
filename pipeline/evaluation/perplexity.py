"""Perplexity of reference replies: exp(mean NLL) of the assistant tokens of dialogues, each given the turns before.

    perplexity.of_dialogues(model, tokenizer, dialogues, max_seq_length=256, batch_size=32, system_prompt=None)

Dialogues are batched by length (less padding), and the vocabulary head runs only where a reply token is predicted:
the [batch, length, vocabulary] logits of every position never exist (SmolLM2: 49k x 576 multiply-adds a position).
"""

from __future__ import annotations

import math

import torch

from pipeline.model import chat_format


@torch.inference_mode()
def of_dialogues(model, tokenizer, dialogues: list[list[dict]], max_seq_length: int, batch_size: int,
                 system_prompt: str | None) -> float:
    """exp(mean NLL) of the assistant tokens of `dialogues`, each given the turns before it."""
    encoded = [chat_format.tokenize_conversation(tokenizer, messages, max_seq_length, system_prompt)
               for messages in dialogues]
    encoded = sorted((e for e in encoded if e is not None), key=lambda e: len(e["input_ids"]))
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        batch = chat_format.pad_batch(encoded[start : start + batch_size], tokenizer.pad_token_id, device=model.device)
        labels = batch["labels"][:, 1:]
        scored = labels != chat_format.IGNORE_INDEX
        logits = reply_logits(model, batch["input_ids"], batch["attention_mask"], scored)
        total_nll += torch.nn.functional.cross_entropy(logits.float(), labels[scored], reduction="sum").item()
        total_tokens += int(scored.sum())
    return math.exp(total_nll / max(total_tokens, 1))


def reply_logits(model, input_ids, attention_mask, scored) -> torch.Tensor:
    """The logits predicting each scored position ([n, vocabulary]): the decoder's hidden states there through the
    output head. Models whose head is more than a projection (logit soft-capping) get their full forward."""
    if getattr(model.config, "final_logit_softcapping", None):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][scored]
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return model.get_output_embeddings()(hidden[:, :-1][scored])
