import math

import pytest

from pipeline.serving import chat_requests
from pipeline.serving.chat_requests import Limits, RequestError

LIMITS = Limits("smollm2-chat", max_tokens=96, max_tokens_limit=512, temperature=0.0)
USER = [{"role": "user", "content": "Hello"}]


def test_a_request_gets_the_servers_defaults_and_its_own_values():
    assert chat_requests.chat({"model": "smollm2-chat", "messages": USER}, LIMITS) == {
        "messages": USER, "stream": False, "max_tokens": 96, "temperature": 0.0}
    request = chat_requests.chat({"messages": [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": [{"type": "text", "text": "Hel"},
                                                                            {"type": "text", "text": "lo"}]}],
                                  "max_completion_tokens": 512, "temperature": 0.7, "top_p": 0.9, "stop": "\n",
                                  "stream": True, "seed": 3, "n": 1, "user": "u-1"}, LIMITS)
    assert request == {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
                       "stream": True, "max_tokens": 512, "temperature": 0.7, "top_p": 0.9, "stop": ["\n"],
                       "seed": 3}


@pytest.mark.parametrize(("change", "param"), [
    ({"messages": []}, "messages"),
    ({"messages": "Hello"}, "messages"),
    ({"messages": ["Hello"]}, "messages[0]"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [*USER, {"role": "assistant", "content": "Hi"}]}, "messages[1].role"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 513}, "max_tokens"),
    ({"max_tokens": "8"}, "max_tokens"),
    ({"max_completion_tokens": True}, "max_completion_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stream": "yes"}, "stream"),
    ({"seed": 1.5}, "seed"),
    ({"n": 2}, "n"),
    ({"tools": []}, "tools"),
    ({"logprobs": True}, "logprobs"),
])
def test_a_malformed_request_is_a_400_naming_its_field(change, param):
    with pytest.raises(RequestError) as refused:
        chat_requests.chat({"messages": USER, **change}, LIMITS)
    assert refused.value.status == 400 and refused.value.param == param
    body = refused.value.body()["error"]
    assert body["type"] == "invalid_request_error" and body["param"] == param and param.split("[")[0] in body["message"]


def test_another_model_is_a_404_and_a_body_that_is_no_object_a_400():
    with pytest.raises(RequestError) as refused:
        chat_requests.chat({"model": "gpt-4o", "messages": USER}, LIMITS)
    assert refused.value.status == 404 and "smollm2-chat" in refused.value.message
    assert chat_requests.chat({"model": "smollm2-chat@champion", "messages": USER}, LIMITS)["max_tokens"] == 96
    with pytest.raises(RequestError, match="JSON object, got list"):
        chat_requests.chat([USER], LIMITS)


def test_feedback_is_up_down_or_a_score_with_an_optional_correction():
    assert chat_requests.feedback({"id": "chatcmpl-1", "rating": "up"}) == ("chatcmpl-1", "up", None)
    assert chat_requests.feedback({"id": "c", "rating": 0.25, "correction": "Better."}) == ("c", 0.25, "Better.")
    for body, param in (({"rating": "up"}, "id"), ({"id": "c", "rating": "good"}, "rating"),
                        ({"id": "c", "rating": 2}, "rating"), ({"id": "c", "rating": True}, "rating"),
                        ({"id": "c", "rating": "up", "correction": " "}, "correction"),
                        ({"id": "c", "rating": "up", "comment": "x"}, "comment")):
        with pytest.raises(RequestError) as refused:
            chat_requests.feedback(body)
        assert refused.value.param == param
