"""The OpenAI-compatible HTTP API of the champion (FastAPI):

    POST /v1/chat/completions     a reply, or with `stream: true` server-sent events ending `data: [DONE]`
    GET  /v1/models               the registered model, and the version serving now
    POST /v1/feedback             {"id", "rating": "up" | "down" | score, "correction"?}: 404 for an unknown id
    GET  /health                  the version serving, the exchanges recorded and not, the last load error

Each reply is answered by the version the champion follower holds for it (a switch waits for it to finish) and
recorded with its id, messages, model version and latency once it is complete (exchange_log.py). A request that
brings no system message gets the one the version was trained with, as evaluation prompted it. Generation itself
is the engine's (engine.py: transformers' serving).
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from pipeline.serving import chat_requests, exchange_log
from pipeline.serving.champion_follower import ChampionFollower, NoChampion, Served
from pipeline.serving.chat_requests import RequestError
from pipeline.serving.engine import Engine
from pipeline.serving.exchange_log import ExchangeLog


def build_app(follower: ChampionFollower, engine: Engine, exchanges: ExchangeLog,
              limits: chat_requests.Limits) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await follower.start()
        await asyncio.to_thread(exchanges.prune)
        yield
        follower.stop()
        engine.shutdown()

    app = FastAPI(lifespan=lifespan, title="nightly-chat-retrain: the champion")

    @app.exception_handler(RequestError)
    async def refused(_request: Request, error: RequestError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = chat_requests.chat(await _json(request), limits)
        try:
            served = await follower.acquire()
        except NoChampion as exc:
            return JSONResponse({"error": {"message": str(exc), "type": "service_unavailable", "param": None,
                                           "code": None}}, status_code=503)
        return await _answer(engine, follower, exchanges, served, body)

    @app.get("/v1/models")
    async def models():
        served = follower.current
        data = [] if served is None else [{"id": served.name, "object": "model", "owned_by": "nightly-chat-retrain",
                                           "created": int(served.path.stat().st_mtime), "version": served.version,
                                           "root": served.model_id}]
        return {"object": "list", "data": data}

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        exchange_id, rating, correction = chat_requests.feedback(await _json(request))
        try:
            entry = await asyncio.to_thread(exchanges.feedback, exchange_id, rating, correction)
        except exchange_log.UnknownExchange:
            raise RequestError("id", f"no recorded exchange has the id {exchange_id!r}", status=404) from None
        return {"id": exchange_id, "stored": True, "rating": entry["rating"]}

    @app.get("/health")
    async def health():
        served = follower.current
        ok = served is not None and engine.healthy()
        return JSONResponse({"status": "ok" if ok else "unavailable", "serving": served.model_id if served else None,
                             "exchanges": dict(exchanges.counts), "last_error": follower.last_error},
                            status_code=200 if ok else 503)

    return app


async def _json(request: Request):
    try:
        return json.loads(await request.body())
    except ValueError as exc:
        raise RequestError(None, f"the request body is not JSON: {exc}") from None


async def _answer(engine: Engine, follower: ChampionFollower, exchanges: ExchangeLog, served: Served, body: dict):
    """The engine's answer, its model shown as `<name>/<version>`, recorded once complete; the version is held
    until the last byte is sent."""
    started = time.monotonic()
    exchange_id = exchange_log.new_id()
    prompt = body["messages"]
    if served.system_prompt and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": served.system_prompt}, *prompt]

    async def record(reply: str, finish_reason: str | None) -> None:
        await asyncio.to_thread(exchanges.record, exchange_id, body["messages"], reply, served.name,
                                served.version, (time.monotonic() - started) * 1000, finish_reason)

    try:
        response = await engine.complete({**body, "messages": prompt}, served.path, exchange_id)
    except BaseException:
        await follower.release(served)
        raise
    if not isinstance(response, StreamingResponse):
        try:
            answer = json.loads(response.body)
            if "choices" in answer:
                answer["model"] = served.model_id
                await record(answer["choices"][0]["message"].get("content") or "",
                             answer["choices"][0].get("finish_reason"))
            return JSONResponse(answer, status_code=response.status_code)
        finally:
            await follower.release(served)
    return StreamingResponse(_events(response.body_iterator, served, follower, record),
                             media_type="text/event-stream", headers={"X-Request-ID": exchange_id})


async def _events(upstream, served: Served, follower: ChampionFollower, record):
    """transformers' events with our model name, then `data: [DONE]` (what OpenAI sends and clients wait for)."""
    reply, finish_reason, complete = [], None, False
    try:
        async for text in upstream:
            for event in (e for e in text.split("\n\n") if e.strip()):
                payload = event.removeprefix("data: ")
                chunk = json.loads(payload)
                if "choices" not in chunk:  # an error event: passed on as it is, the exchange not recorded
                    yield f"{event}\n\n"
                    continue
                chunk["model"] = served.model_id
                for choice in chunk["choices"]:
                    reply.append(choice.get("delta", {}).get("content") or "")
                    finish_reason = choice.get("finish_reason") or finish_reason
                complete = complete or finish_reason is not None
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        if complete:  # before [DONE]: a client that saw the end can find the exchange (and rate it)
            await record("".join(reply), finish_reason)
        yield "data: [DONE]\n\n"
    finally:
        await upstream.aclose()  # a client gone mid-stream: transformers cancels the generation
        await follower.release(served)
