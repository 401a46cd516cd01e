"""Whether a causal LM's logits are its output head applied to the decoder's last hidden states, and nothing more.

Code that computes logits only where they are needed (the training stage's chunked loss, the perplexity pass) runs
the head itself on selected hidden states; that is right only for such a model. Others scale or cap the logits in
their own forward: Cohere multiplies by `logit_scale`, Granite divides by `logits_scaling`, Gemma 2/3 soft-cap
(`final_logit_softcapping`), some multiply by `output_multiplier`. Those need their full forward.
"""

from __future__ import annotations

import torch

LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")


def is_plain_projection(model: torch.nn.Module) -> bool:
    """A linear output head on a decoder whose output it reads directly, with no logit scaling or soft-capping."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    config = getattr(model, "config", None)
    transformed = any(getattr(config, name, None) not in (None, 1.0) for name in LOGIT_TRANSFORMS)
    return isinstance(head, torch.nn.Linear) and getattr(model, "base_model_prefix", "") != "" and not transformed
