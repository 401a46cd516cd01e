from pipeline.data import records
from pipeline.data.records import Conversation, Rejected


def rows(*items):
    return [(f"f.jsonl:{n}", item) for n, item in enumerate(items, start=1)]


def test_records_become_canonical_turns_or_a_rejection_naming_the_rule():
    openai_record = {"messages": [{"role": "system", "content": "Be kind."}, {"role": "Human", "content": "Hi"},
                                  {"role": "ChatGPT", "content": "Hello"}]}
    found = list(records.to_conversations(rows(openai_record, {"messages": [{"role": "tool", "content": "x"}]},
                                               {"text": "no messages"}),
                                          "f.jsonl", "2026-12-06", sharegpt=False, language=None, keep_system=False,
                                          outcome="served.accepted"))
    assert isinstance(found[0], Conversation) and found[0].messages == [("user", "Hi"), ("assistant", "Hello")]
    assert found[0].system_dropped and found[0].outcome == "served.accepted"
    assert [type(f) for f in found[1:]] == [Rejected, Rejected]
    assert found[1].reason.startswith("message 1: unknown role 'tool'") and found[1].origin == "f.jsonl:2"
    assert found[2].reason == "missing field 'messages' (a list of messages)"


def test_sharegpt_fields_and_a_kept_system_message():
    record = {"conversations": [{"from": "system", "value": "Persona."}, {"from": "human", "value": "Hi"},
                                {"from": "gpt", "value": "Hey"}]}
    [found] = records.to_conversations(rows(record), "f.jsonl", "2026-12-06", sharegpt=True, language="en",
                                       keep_system=True)
    assert found.messages == [("system", "Persona."), ("user", "Hi"), ("assistant", "Hey")]
    assert found.language == "en" and not found.system_dropped
