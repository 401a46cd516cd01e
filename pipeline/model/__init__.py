"""Causal chat LMs as the stages use them: loading (HF directories, GGUF), the chat format, batched generation."""
