"""The model file of the registered chat model (MLflow models-from-code): MLflow runs this file to build the model,
so the logged model holds source code, not a pickle. Logged by serving.log_chat_model; the class is in serving.py.
"""

import mlflow

from pipeline.serving import ChatModel

mlflow.models.set_model(ChatModel())
