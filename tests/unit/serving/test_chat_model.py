"""The registered chat model: logged from code with the whole pipeline package, it loads in MLflow's own way and
answers each conversation as the evaluation's greedy decoding does, with the system prompt it was trained with."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline.model import generation, loading
from pipeline.serving import chat_model

CONVERSATION = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"},
                {"role": "user", "content": "你好"}]


def test_messages_arrive_as_plain_lists_whatever_schema_enforcement_made_of_them():
    frame = pd.DataFrame({"messages": [np.array(CONVERSATION, dtype=object), CONVERSATION[:1]]})
    assert chat_model.conversations(frame) == [CONVERSATION, CONVERSATION[:1]]
    assert chat_model.conversations({"messages": CONVERSATION}) == [CONVERSATION]


@pytest.mark.timeout(300)
def test_the_logged_model_loads_and_replies_like_greedy_generation(tiny_model_dir, tmp_path):
    weights = tmp_path / "trained"
    loading.load_model(str(tiny_model_dir)).save_pretrained(weights)
    loading.load_tokenizer(str(tiny_model_dir)).save_pretrained(weights)
    (weights / "train_config.json").write_text(json.dumps({"train.system_prompt": "Be brief."}))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("serving", (tmp_path / "artifacts").as_uri()))
    with mlflow.start_run():
        info = chat_model.log_chat_model(str(weights))
    served = mlflow.pyfunc.load_model(info.model_uri)
    replies = served.predict(pd.DataFrame({"messages": [CONVERSATION]}), params={"max_new_tokens": 5})
    expected = generation.generate_replies(loading.load_model(str(weights)), loading.load_tokenizer(str(weights)),
                                           [CONVERSATION], "Be brief.", max_new_tokens=5)
    assert list(replies) == expected
