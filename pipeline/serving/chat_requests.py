"""What `/v1/chat/completions` and `/v1/feedback` accept, checked before anything runs: a request is data, and a
malformed one gets an OpenAI-style 400 naming the field and the rule (`{"error": {"message", "type", "param"}}`).

Chat: `messages` (system / user / assistant, text content as a string or as text parts, ending with the user),
`max_tokens` or `max_completion_tokens` (1 to serve.max_tokens_limit; default serve.max_tokens), `temperature`
(0 to 2; default serve.temperature: 0 = greedy, as evaluated), `top_p` (0 to 1], `stop` (a string or up to 4),
`stream`, `seed`, `n` (1 only), `model` (the registered name, or left out); `user`, `stream_options`, `metadata`
and `store` are accepted and change nothing. Other fields (penalties, tools, logprobs, ...) are refused by name
rather than silently ignored, as OpenAI refuses an unrecognized argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ROLES = ("system", "user", "assistant")
IGNORED = ("user", "stream_options", "metadata", "store")  # what clients send by habit; nothing to do with them
ACCEPTED = ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "stream",
            "seed", "n", *IGNORED)
MAX_STOP = 4


class RequestError(ValueError):
    def __init__(self, param: str | None, message: str, status: int = 400):
        super().__init__(message)
        self.param, self.message, self.status = param, message, status

    def body(self) -> dict:
        kind = "not_found_error" if self.status == 404 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": None}}


@dataclass(frozen=True)
class Limits:
    registered_model: str
    max_tokens: int
    max_tokens_limit: int
    temperature: float


def chat(body, limits: Limits) -> dict:
    """The request as the engine gets it: messages as role + text, every generation field set."""
    if not isinstance(body, dict):
        raise RequestError(None, f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(ACCEPTED))
    if unknown:
        raise RequestError(unknown[0], f"unrecognized request argument supplied: {unknown[0]}")
    model = body.get("model")
    if model is not None and model not in (limits.registered_model, f"{limits.registered_model}@champion"):
        raise RequestError("model", f"the model {model!r} does not exist here; this server serves "
                                    f"{limits.registered_model!r} (its champion)", status=404)
    request = {"messages": messages(body.get("messages")), "stream": _bool(body, "stream", False)}
    request["max_tokens"] = max_tokens(body, limits)
    request["temperature"] = _number(body, "temperature", limits.temperature, low=0.0, high=2.0)
    top_p = _number(body, "top_p", None, low=0.0, high=1.0)
    if top_p is not None:
        if top_p == 0.0:
            raise RequestError("top_p", "top_p must be > 0 and <= 1, got 0")
        request["top_p"] = top_p
    if body.get("stop") is not None:
        request["stop"] = stop(body["stop"])
    if body.get("seed") is not None:
        if not isinstance(body["seed"], int) or isinstance(body["seed"], bool):
            raise RequestError("seed", f"seed must be an integer, got {body['seed']!r}")
        request["seed"] = body["seed"]
    if body.get("n", 1) != 1:
        raise RequestError("n", f"n must be 1 (one reply per request), got {body['n']!r}")
    return request


def messages(items) -> list[dict]:
    if not isinstance(items, list) or not items:
        raise RequestError("messages", "messages must be a non-empty list of {role, content} objects")
    out = []
    for index, item in enumerate(items):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise RequestError(where, f"{where} must be an object with role and content")
        role = item.get("role")
        if role not in ROLES:
            raise RequestError(f"{where}.role", f"{where}.role must be one of {list(ROLES)}, got {role!r}")
        out.append({"role": role, "content": _text(item.get("content"), f"{where}.content")})
    if out[-1]["role"] != "user":
        last = f"messages[{len(out) - 1}].role"
        raise RequestError(last, f"{last} must be 'user' (the reply answers the last message), got {out[-1]['role']!r}")
    return out


def _text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(isinstance(p, dict) for p in content):
        parts = []
        for number, part in enumerate(content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(f"{where}[{number}]", f"{where}[{number}]: only text parts "
                                                         f"({{type: text, text}}) are served, got {part.get('type')!r}")
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError(where, f"{where} must be a string or a list of text parts, got {type(content).__name__}")


def max_tokens(body: dict, limits: Limits) -> int:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(name)
    if value is None:
        return limits.max_tokens
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limits.max_tokens_limit:
        raise RequestError(name, f"{name} must be an integer from 1 to {limits.max_tokens_limit}, got {value!r}")
    return value


def stop(value) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if (not isinstance(values, list) or not 1 <= len(values) <= MAX_STOP
            or not all(isinstance(v, str) and v for v in values)):
        raise RequestError("stop", f"stop must be a non-empty string or a list of 1 to {MAX_STOP} of them, "
                                   f"got {value!r}")
    return values


def feedback(body) -> tuple[str, str | float, str | None]:
    """`{"id": <completion id>, "rating": "up" | "down" | a score in [0, 1], "correction": <a better reply>}`."""
    if not isinstance(body, dict):
        raise RequestError(None, f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - {"id", "rating", "correction"})
    if unknown:
        raise RequestError(unknown[0], f"unrecognized request argument supplied: {unknown[0]}")
    if not isinstance(body.get("id"), str) or not body["id"]:
        raise RequestError("id", "id must be the completion's id (the `id` of its reply)")
    rating = body.get("rating")
    score = isinstance(rating, (int, float)) and not isinstance(rating, bool)
    if not (rating in ("up", "down") or (score and math.isfinite(rating) and 0 <= rating <= 1)):
        raise RequestError("rating", f'rating must be "up", "down" or a score from 0 to 1, got {rating!r}')
    correction = body.get("correction")
    if correction is not None and (not isinstance(correction, str) or not correction.strip()):
        raise RequestError("correction", "correction must be a non-empty string (the reply that should have been)")
    return body["id"], rating, correction


def _bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(name, f"{name} must be true or false, got {value!r}")
    return value


def _number(body: dict, name: str, default, low: float, high: float):
    value = body.get(name)
    if value is None:
        return default
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            or not low <= value <= high):
        raise RequestError(name, f"{name} must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)
