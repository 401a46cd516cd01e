"""A terminal chat with the served champion: `make serve` in one terminal, then `make chat` in another.

    python -m ops.chat --port 5001 [--max-tokens 96] [--temperature 0.7]

It speaks the OpenAI chat API through the official `openai` client, as any application would, and prints the
reply as it streams. The server is stateless: the whole conversation is sent with every turn. `/reset` starts over;
Ctrl-D quits.
"""

from __future__ import annotations

import argparse
import sys

import openai


def ask(client: openai.OpenAI, model: str, messages: list[dict], max_tokens: int, temperature: float) -> str:
    """One reply, printed as it streams; the whole reply returned."""
    parts = []
    print("bot> ", end="", flush=True)
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                temperature=temperature, stream=True):
        text = (chunk.choices[0].delta.content or "") if chunk.choices else ""
        parts.append(text)
        print(text, end="", flush=True)
    print()
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.chat", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=5001, help="the port of `make serve`")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (as evaluated); 0.7 varies more")
    args = parser.parse_args(argv)
    url = f"http://127.0.0.1:{args.port}/v1"
    client = openai.OpenAI(base_url=url, api_key="local", max_retries=0, timeout=120)
    try:
        served = client.models.list().data
    except openai.APIError as exc:
        print(f"no answer from {url} ({exc}); is `make serve` running?", file=sys.stderr)
        return 1
    if not served:
        print(f"{url} serves no model yet (nothing promoted): run `make run` first", file=sys.stderr)
        return 1
    model = served[0].id
    print(f"chatting with {model} v{getattr(served[0], 'version', '?')} at {url}; /reset starts over, Ctrl-D quits")
    history: list[dict] = []
    while True:
        try:
            text = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if text == "/reset":
            history = []
            print("(new conversation)")
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        try:
            reply = ask(client, model, history, args.max_tokens, args.temperature)
        except openai.APIError as exc:  # the server's reason, e.g. a 400 naming the field
            print(f"\nno reply from {url} ({exc}); is `make serve` running?", file=sys.stderr)
            history.pop()  # the unanswered turn is not part of the conversation
            continue
        history.append({"role": "assistant", "content": reply})


if __name__ == "__main__":
    sys.exit(main())
