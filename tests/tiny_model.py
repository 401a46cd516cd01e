"""A tiny chat model built offline in about a second: Llama (SmolLM2's architecture; 2 layers, width 128, tied
embeddings) with a byte-level BPE tokenizer trained on the chatterbot corpus and a ChatML template (the same turn
markers as SmolLM2, pad == eos included)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus_lines(languages=("english", "chinese")):
    root = Path(importlib.resources.files("chatterbot_corpus")) / "data"
    for language in languages:
        for path in sorted((root / language).glob("*.yml")):
            for conversation in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
                if isinstance(conversation, list):
                    yield from (str(u) for u in conversation)


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus_lines(), trainers.BpeTrainer(vocab_size=2000, special_tokens=SPECIAL,
                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=512, hidden_size=128, intermediate_size=256,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def tiny_trainer(model_dir, config, output):
    """The train stage's Trainer (train.make_trainer) on the tiny model and eight packed one-turn conversations."""
    from datasets import Dataset

    from pipeline import train
    from pipeline.model import chat_format, loading
    from pipeline.training.samples import batching

    tokenizer = loading.load_tokenizer(str(model_dir))
    samples = [{**chat_format.tokenize_conversation(tokenizer, [{"role": "user", "content": f"hello {i}"},
                                                                {"role": "assistant", "content": "hi there"}], 64),
                "conversation_ids": [str(i)]} for i in range(8)]
    trainer, _ = train.make_trainer(loading.load_model(str(model_dir)), tokenizer,
                                    Dataset.from_list(batching.pack(samples, 64)), None, config, output)
    return trainer
