"""Perplexity of reference replies: exp(mean NLL) of the assistant tokens of dialogues, each given the turns before.

    perplexity.of_dialogues(model, tokenizer, dialogues, max_seq_length=256, batch_size=32, system_prompt=None)
    perplexity.per_dialogue(...)  # [(summed NLL, scored tokens)] per dialogue: what the generation cache keeps
    perplexity.combine(parts)     # exp(sum NLL / sum tokens)

Dialogues are batched by length (less padding), and the vocabulary head runs only where a reply token is predicted:
the [batch, length, vocabulary] logits of every position never exist (SmolLM2: 49k x 576 multiply-adds a position).
"""

from __future__ import annotations

import math

import torch

from pipeline.model import chat_format, output_head


def of_dialogues(model, tokenizer, dialogues: list[list[dict]], max_seq_length: int, batch_size: int,
                 system_prompt: str | None) -> float:
    """exp(mean NLL) of the assistant tokens of `dialogues`, each given the turns before it."""
    return combine(per_dialogue(model, tokenizer, dialogues, max_seq_length, batch_size, system_prompt))


def combine(parts: list[tuple[float, int]]) -> float:
    """The perplexity of dialogues from their (summed NLL, scored tokens): every token weighs the same."""
    return math.exp(sum(nll for nll, _ in parts) / max(sum(tokens for _, tokens in parts), 1))


@torch.inference_mode()
def per_dialogue(model, tokenizer, dialogues: list[list[dict]], max_seq_length: int, batch_size: int,
                 system_prompt: str | None) -> list[tuple[float, int]]:
    """(summed NLL, scored tokens) of each dialogue's assistant tokens, in the order given; (0.0, 0) for one whose
    truncation left no reply token."""
    encoded = [chat_format.tokenize_conversation(tokenizer, messages, max_seq_length, system_prompt)
               for messages in dialogues]
    order = sorted((i for i, e in enumerate(encoded) if e is not None), key=lambda i: len(encoded[i]["input_ids"]))
    parts = [(0.0, 0)] * len(dialogues)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = chat_format.pad_batch([encoded[i] for i in rows], tokenizer.pad_token_id, device=model.device)
        labels = batch["labels"][:, 1:]
        scored = labels != chat_format.IGNORE_INDEX
        logits = reply_logits(model, batch["input_ids"], batch["attention_mask"], scored)
        nll = torch.nn.functional.cross_entropy(logits.float(), labels[scored], reduction="none")
        row_of_token = scored.nonzero()[:, 0]  # scored positions come row by row, as labels[scored] lists them
        sums = torch.zeros(len(rows), dtype=torch.float64).index_add_(0, row_of_token, nll.double())
        for row, index in enumerate(rows):
            parts[index] = (float(sums[row]), int(scored[row].sum()))
    return parts


def reply_logits(model, input_ids, attention_mask, scored) -> torch.Tensor:
    """The logits predicting each scored position ([n, vocabulary]): the decoder's hidden states there through the
    output head. Models whose logits are more than that (scaled, soft-capped: output_head.py) get their full
    forward."""
    if not output_head.is_plain_projection(model):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][scored]
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return model.get_output_embeddings()(hidden[:, :-1][scored])
