"""Tiny random chat models of four families, built offline in about a second each: the family's architecture
(transformers' own config class), its special tokens and a chat template written here that behaves as that
family's does (turn markers, end of turn, system role or none, a default system prompt). The byte-level BPE is
tests/tiny_model.py's, trained on the chatterbot corpus.

    Family        template behaviour reproduced                                   ends a reply with
    llama3        <|start_header_id|>role<|end_header_id|>, bos first              <|eot_id|> (not eos)
    qwen2         ChatML, "You are a helpful assistant." when no system message    <|im_end|>
    qwen3         ChatML with reasoning blocks: the final reply gets one (empty       <|im_end|>
                  when it has none), earlier replies lose theirs; <think> and
                  </think> are added tokens, not special ones
    gemma         <start_of_turn>user / model, refuses a system message            <end_of_turn>
    mistral       [INST] ... [/INST] as plain text, reply then eos, no system      </s> (= eos; pad == eos)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tiny_model import corpus_lines
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GemmaConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN3 = (
    "{% set ns = namespace(last_user=-1) %}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{% set content = m['content'] %}{% set reasoning = '' %}"
    "{% if '</think>' in content %}{% set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\n') %}"
    "{% set content = content.split('</think>')[-1].lstrip('\n') %}{% endif %}"
    "{% if loop.index0 > ns.last_user and (loop.last or reasoning) %}"
    "{{ '<|im_start|>assistant\n<think>\n' + reasoning + '\n</think>\n\n' + content + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>assistant\n' + content + '<|im_end|>\n' }}{% endif %}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    config_class: type
    template: str
    special: tuple[str, ...]
    bos: str
    eos: str
    pad: str | None  # None: the tokenizer has none (loading.load_tokenizer falls back to eos)
    end_of_turn: str  # the token a reply ends with, which generation must stop on
    system_role: bool  # False: the template refuses a system message (train.system_prompt: null)
    extra: dict | None = None  # more config fields of the architecture
    added: tuple[str, ...] = ()  # added tokens that are not special (decoding keeps them)


FAMILIES = {
    "llama3": Family("llama3", LlamaConfig, LLAMA3, ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                                     "<|end_header_id|>", "<|eot_id|>"),
                     "<|begin_of_text|>", "<|end_of_text|>", None, "<|eot_id|>", True),
    "qwen2": Family("qwen2", Qwen2Config, QWEN2, ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_end|>", True),
    "qwen3": Family("qwen3", Qwen3Config, QWEN3, ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_end|>", True, {"head_dim": 32},
                    ("<think>", "</think>")),
    "gemma": Family("gemma", GemmaConfig, GEMMA, ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
                    "<bos>", "<eos>", "<pad>", "<end_of_turn>", False, {"head_dim": 32}),
    "mistral": Family("mistral", MistralConfig, MISTRAL, ("<unk>", "<s>", "</s>"), "<s>", "</s>", None, "</s>", False),
}


def trained_bpe() -> Tokenizer:
    """The byte-level BPE of tests/tiny_model.py (2,000 tokens from the chatterbot corpus), no special tokens yet."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus_lines(), trainers.BpeTrainer(vocab_size=2000,
                                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return bpe


def build_family_model(family: Family, bpe: Tokenizer, out_dir: Path, seed: int = 0) -> Path:
    """A 2-layer model of the family's architecture with its tokenizer and template, saved as a Hugging Face
    directory (what `project.base_model` names)."""
    import torch

    torch.manual_seed(seed)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(bpe.to_str()))
    tokenizer.add_special_tokens({"additional_special_tokens": list(family.special)})
    tokenizer.add_tokens(list(family.added))
    tokenizer.bos_token, tokenizer.eos_token = family.bos, family.eos
    if family.pad is not None:
        tokenizer.pad_token = family.pad
    tokenizer.chat_template = family.template
    pad_id = tokenizer.convert_tokens_to_ids(family.pad or family.eos)
    config = family.config_class(
        vocab_size=len(tokenizer), max_position_embeddings=512, hidden_size=128, intermediate_size=256,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id,
        **(family.extra or {}),
    )
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "family.json").write_text(json.dumps({"family": family.name}))
    return out_dir
