"""Batched, left-padded greedy decoding gives exactly the replies of one-prompt-at-a-time decoding (fp32)."""

import torch

from pipeline import generation, models


def test_batched_equals_one_at_a_time(tiny_model_dir):
    tokenizer = models.load_tokenizer(str(tiny_model_dir))
    model = models.load_model(str(tiny_model_dir))
    torch.manual_seed(0)
    with torch.no_grad():  # larger random weights: peaked logits, so the untrained model does not stop at once
        for param in model.parameters():
            param.normal_(0, 0.3)
    histories = [[{"role": "user", "content": text}] for text in
                 ["Hello", "How are you doing today, my friend?", "你好", "What is the meaning of life?"]]
    batched = generation.generate_replies(model, tokenizer, histories, max_new_tokens=8, batch_size=4)
    single = [generation.generate_replies(model, tokenizer, [h], max_new_tokens=8, batch_size=1)[0]
              for h in histories]
    assert batched == single
    assert all(len(reply) > 4 for reply in batched)  # real text, or the comparison would prove nothing
