"""Batched greedy decoding equals one prompt at a time (fp32); replies cut mid-character; temperature."""

import torch

from pipeline.model import generation, loading


def test_batched_equals_one_at_a_time(tiny_model_dir):
    tokenizer = loading.load_tokenizer(str(tiny_model_dir))
    model = loading.load_model(str(tiny_model_dir))
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


class ScriptedModel:
    """Stands in for a causal LM: `generate` appends fixed tokens and records how it was called."""

    device = torch.device("cpu")  # where generate_replies puts each batch, as on a PreTrainedModel

    def __init__(self, new_tokens: list[int]):
        self.new_tokens, self.calls = new_tokens, []

    def eval(self):
        return self

    def generate(self, input_ids, **kwargs):
        assert input_ids.device == self.device and kwargs["attention_mask"].device == self.device
        self.calls.append(kwargs)
        return torch.cat([input_ids, torch.tensor([self.new_tokens] * len(input_ids))], dim=1)


def test_reply_cut_inside_a_character_drops_its_partial_bytes(tiny_model_dir):
    tokenizer = loading.load_tokenizer(str(tiny_model_dir))
    ids = tokenizer("你好，我叫机器人。", add_special_tokens=False)["input_ids"]
    # The tiny byte-level BPE spells 叫 with two tokens (SmolLM2's does too): cut after the first one.
    cut = next(n for n in range(1, len(ids)) if tokenizer.decode(ids[:n]).endswith("\ufffd"))
    reply = generation.generate_replies(ScriptedModel(ids[:cut]), tokenizer, [[{"role": "user", "content": "嗨"}]],
                                        max_new_tokens=cut)
    assert reply == [tokenizer.decode(ids[:cut]).rstrip("\ufffd")] and reply[0] and "\ufffd" not in reply[0]
    assert generation.decode_reply(tokenizer, ids) == "你好，我叫机器人。"  # complete text is left alone


def test_a_reasoning_block_written_first_is_not_part_of_the_reply(tiny_model_dir):
    tokenizer = loading.load_tokenizer(str(tiny_model_dir))
    ids = tokenizer("<think>\nThe user greets me.\n</think>\n\nHello!<|im_end|>", add_special_tokens=False)["input_ids"]
    assert generation.decode_reply(tokenizer, ids) == "Hello!"
    plain = tokenizer("I think </think> is a tag", add_special_tokens=False)["input_ids"]
    assert generation.decode_reply(tokenizer, plain) == "I think </think> is a tag"  # only a leading block is cut


def test_temperature_zero_is_greedy_and_above_zero_samples(tiny_model_dir):
    tokenizer = loading.load_tokenizer(str(tiny_model_dir))
    model = ScriptedModel(tokenizer("hi", add_special_tokens=False)["input_ids"])
    history = [[{"role": "user", "content": "Hello"}]]
    generation.generate_replies(model, tokenizer, history)
    generation.generate_replies(model, tokenizer, history, temperature=0.7)
    assert model.calls[0]["do_sample"] is False and "temperature" not in model.calls[0]
    assert model.calls[1]["do_sample"] is True and model.calls[1]["temperature"] == 0.7
