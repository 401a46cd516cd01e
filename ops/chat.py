"""A terminal chat with the served champion: `make serve` in one terminal, then `make chat` in another.

    python -m ops.chat --port 5001 [--max-new-tokens 96] [--temperature 0.7]

The model is stateless: the whole conversation is sent with every turn. `/reset` starts over; Ctrl-D quits.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request


def ask(url: str, messages: list[dict], max_new_tokens: int, temperature: float, timeout: float = 120) -> str:
    """One reply from the scoring server, in its OpenAI-like form: messages and params side by side."""
    body = json.dumps({"messages": messages, "max_new_tokens": max_new_tokens, "temperature": temperature})
    request = urllib.request.Request(url, body.encode("utf-8"), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        replies = json.loads(response.read())
    return (replies["predictions"] if isinstance(replies, dict) else replies)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.chat", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=5001, help="the port of `make serve`")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (as evaluated); 0.7 varies more")
    args = parser.parse_args(argv)
    url = f"http://127.0.0.1:{args.port}/invocations"
    print(f"chatting with {url}; /reset starts over, Ctrl-D quits")
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
            reply = ask(url, history, args.max_new_tokens, args.temperature)
        except (urllib.error.URLError, OSError) as exc:  # HTTPError is a URLError: show the server's reason
            detail = exc.read().decode("utf-8", "replace")[:500] if isinstance(exc, urllib.error.HTTPError) else exc
            print(f"no reply from {url} ({detail}); is `make serve` running?", file=sys.stderr)
            history.pop()  # the unanswered turn is not part of the conversation
            continue
        history.append({"role": "assistant", "content": reply})
        print(f"bot> {reply}")


if __name__ == "__main__":
    sys.exit(main())
