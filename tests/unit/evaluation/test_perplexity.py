"""Reference perplexity is exp of the mean NLL of the assistant tokens, i.e. what the model's own loss reports."""

import math

import pandas as pd
import pytest
import torch

from pipeline.evaluation import held_out, perplexity
from pipeline.model import chat_format, loading


def test_perplexity_matches_the_models_own_loss(tiny_model_dir):
    tokenizer = loading.load_tokenizer(str(tiny_model_dir))
    model = loading.load_model(str(tiny_model_dir))
    turns = pd.DataFrame({"conversation_id": ["a", "a", "b", "b"], "turn_index": [0, 1, 0, 1],
                          "role": ["user", "assistant"] * 2, "text": ["Hello", "Hi there!", "你好吗?", "很好，谢谢."],
                          "language": ["en", "en", "zh", "zh"], "split": ["test"] * 4})
    dialogues = held_out.dialogues(turns, "test", max_examples=None)
    ours = perplexity.of_dialogues(model, tokenizer, dialogues, max_seq_length=256, batch_size=2, system_prompt=None)

    nll, count = 0.0, 0
    for _, _, messages in chat_format.conversations(turns, "test"):  # one at a time: no padding involved
        encoded = chat_format.tokenize_conversation(tokenizer, messages, 256)
        labels = torch.tensor([encoded["labels"]])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([encoded["input_ids"]]), labels=labels).loss.item()
        tokens = int((labels[:, 1:] != -100).sum())
        nll, count = nll + loss * tokens, count + tokens
    assert ours == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert 1 < ours < 2 * len(tokenizer)  # an untrained model is about as unsure as the vocabulary is large
    # A model whose head is more than a projection gets its full forward: the same number here (Llama ignores it)
    model.config.final_logit_softcapping = 30.0
    assert perplexity.of_dialogues(model, tokenizer, dialogues, 256, 2, None) == pytest.approx(ours, rel=1e-5)


@pytest.mark.parametrize("family", ["cohere", "granite"])
def test_a_model_that_scales_its_logits_is_measured_with_them_scaled(family, tiny_model_dir):
    """Cohere multiplies its logits by logit_scale, Granite divides them by logits_scaling: the perplexity is that
    of the model's own forward, not of the bare head (which would be the unscaled logits)."""
    from transformers import CohereConfig, CohereForCausalLM, GraniteConfig, GraniteForCausalLM

    tokenizer = loading.load_tokenizer(str(tiny_model_dir))
    sizes = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 4, "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(0)
    if family == "cohere":
        model = CohereForCausalLM(CohereConfig(**sizes, logit_scale=0.25))
    else:
        model = GraniteForCausalLM(GraniteConfig(**sizes, logits_scaling=4.0))
    model.eval()
    dialogues = [[{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there, friend!"}]]
    encoded = chat_format.tokenize_conversation(tokenizer, dialogues[0], 256)
    labels = torch.tensor([encoded["labels"]])
    with torch.no_grad():
        own = model(input_ids=torch.tensor([encoded["input_ids"]]), labels=labels).loss.item()
        hidden = model.get_decoder()(input_ids=torch.tensor([encoded["input_ids"]])).last_hidden_state
        bare = torch.nn.functional.cross_entropy(model.get_output_embeddings()(hidden[0, :-1]), labels[0, 1:])
    measured = perplexity.of_dialogues(model, tokenizer, dialogues, 256, 2, None)
    assert measured == pytest.approx(math.exp(own), rel=1e-4)
    assert abs(math.log(measured) - bare.item()) > 0.01  # the head alone would have given another number
