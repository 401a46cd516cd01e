"""The registered model: an MLflow pyfunc that answers chat messages with the fine-tuned weights.

    mlflow.pyfunc.load_model("models:/smollm2-chat@champion").predict(pd.DataFrame({"prompt": ["Hello"]}))

Input: a DataFrame with a `prompt` column (one user turn each). Output: a list of assistant replies.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc


class ChatModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from pipeline import models  # heavy imports only when the model is loaded

        directory = context.artifacts["model"]
        self.tokenizer = models.load_tokenizer(directory)
        self.model = models.load_model(directory)
        config = json.loads((Path(directory) / "train_config.json").read_text())
        self.system_prompt = config.get("train.system_prompt")

    def predict(self, model_input, params=None):
        from pipeline import generation

        params = params or {}
        histories = [[{"role": "user", "content": str(prompt)}] for prompt in model_input["prompt"]]
        return generation.generate_replies(
            self.model, self.tokenizer, histories, self.system_prompt,
            max_new_tokens=int(params.get("max_new_tokens", 48)),
        )
