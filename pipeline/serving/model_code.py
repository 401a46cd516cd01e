"""The model file of the registered chat model (MLflow models-from-code): MLflow runs this file to build the model,
so the logged model holds source code, not a pickle. Logged by chat_model.log_chat_model; the class is in chat_model.py.
"""

import mlflow

from pipeline.serving.chat_model import ChatModel

mlflow.models.set_model(ChatModel())
