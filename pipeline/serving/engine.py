"""The engine behind `/v1/chat/completions`: transformers' own OpenAI-compatible server (`transformers serve`, in the
pinned transformers), used as a library: its model manager, its generation (sequential `generate()` or continuous
batching with a paged cache) and its chat-completions handler, which renders the chat template, streams
server-sent events and honours `max_tokens`, `temperature`, `top_p` and `stop` (as stop strings). Ours around it
(openai_api.py): which model answers (the champion, champion_follower.py), the trained system prompt, request
validation, the exchange log and feedback.

Why this engine (docs/serving.md): it is already installed and pinned with the transformers that trains and
evaluates the model, so the served model is the evaluated model with the same tokenizer and template; it loads any
Hugging Face directory the registry holds; continuous batching serves concurrent clients in one batch on CPU.
llama.cpp would need a GGUF export of every champion and its own template handling; vLLM needs a GPU.
"""

from __future__ import annotations

import gc
from pathlib import Path

from transformers.cli.serving.chat_completion import ChatCompletionHandler
from transformers.cli.serving.model_manager import ModelManager
from transformers.cli.serving.utils import GenerationState


class _Handler(ChatCompletionHandler):
    def _build_generation_config(self, body, model_generation_config, use_cb=False):
        config = super()._build_generation_config(body, model_generation_config, use_cb=use_cb)
        # transformers sets the temperature but leaves sampling as the model's generation_config has it (greedy for
        # the models here): a request's temperature > 0 would be ignored.
        config.do_sample = float(body.get("temperature") or 0.0) > 0.0
        if not config.do_sample:
            config.temperature, config.top_p, config.top_k = None, None, None
        return config


class Engine:
    def __init__(self, continuous_batching: bool):
        # model_timeout -1: a served model is unloaded when the champion moves on (unload), never for being idle
        self.models = ModelManager(device="cpu", dtype="auto", continuous_batching=continuous_batching,
                                   model_timeout=-1)
        self.generation = GenerationState(continuous_batching=continuous_batching)
        self.handler = _Handler(self.models, self.generation)

    @staticmethod
    def key(path: Path) -> str:
        return ModelManager.process_model_name(str(path))

    def load(self, path: Path) -> None:
        """Load the weights in `path` (and their tokenizer) now, so the first request does not wait for them."""
        self.models.load_model_and_processor(self.key(path))

    def unload(self, path: Path) -> None:
        key = self.key(path)
        manager = self.generation._generate_managers.pop(key, None)  # its inference thread (sequential mode)
        if manager is not None:
            manager.stop()
        loaded = self.models.loaded_models.pop(key, None)
        if loaded is not None:
            loaded.delete_model()
        gc.collect()

    async def complete(self, body: dict, path: Path, request_id: str):
        """transformers' answer (a JSONResponse, or a StreamingResponse of server-sent events) for a validated body."""
        return await self.handler.handle_request({**body, "model": str(path)}, request_id)

    def healthy(self) -> bool:
        return self.generation.is_cb_alive()

    def shutdown(self) -> None:
        self.generation.shutdown()
        self.models.shutdown()
