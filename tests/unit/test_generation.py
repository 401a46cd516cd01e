"""Batched, left-padded greedy decoding gives exactly the replies of one-prompt-at-a-time decoding (fp32)."""

from pipeline import generation, models


def test_batched_equals_one_at_a_time(tiny_model_dir):
    tokenizer = models.load_tokenizer(str(tiny_model_dir))
    model = models.load_model(str(tiny_model_dir))
    histories = [[{"role": "user", "content": text}] for text in
                 ["Hello", "How are you doing today, my friend?", "你好", "What is the meaning of life?"]]
    batched = generation.generate_replies(model, tokenizer, histories, max_new_tokens=8, batch_size=4)
    single = [generation.generate_replies(model, tokenizer, [h], max_new_tokens=8, batch_size=1)[0]
              for h in histories]
    assert batched == single
    assert all(reply for reply in batched)  # an untrained model still emits text
