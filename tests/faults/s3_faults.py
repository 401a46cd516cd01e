"""A fault-injecting HTTP proxy in front of an S3 server (the tests' moto server), on 127.0.0.1, in a thread.

    proxy = S3FaultProxy("http://127.0.0.1:<moto port>").start()   # then AWS_ENDPOINT_URL=proxy.url
    proxy.inject("500", times=2, method="GET", key=r"chats\\.jsonl")  # the next 2 matching requests get a 500
    proxy.inject("drop", times=None, method="PUT")                  # every matching request, until proxy.clear()
    proxy.injected("500")                                           # how many requests got that fault

Faults: "500" (InternalError), "503" (ServiceUnavailable), "slowdown" (503 with S3's SlowDown error, what S3
answers when a prefix is asked too fast), and "drop": the request goes to S3 and is carried out, then the
connection is cut half-way through the answer (half the body, or half the status line when there is none), as a
load balancer or a lost node does. The error answers never reach S3. `key` is a regular expression searched in
the decoded request target (/bucket/key?query), so a listing matches "list-type" and a prefix matches its objects.
Processes started with AWS_ENDPOINT_URL=proxy.url (stages, an MLflow server) go through it too.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

ERRORS = {  # fault -> (status, S3 error code, message), as S3 words them
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "ServiceUnavailable", "Service is unable to handle request."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
}
FAULTS = (*ERRORS, "drop")
# Per-connection headers: the proxy keeps its own connections on each side.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "expect", "te", "trailer", "upgrade"}


@dataclass
class Rule:
    fault: str
    times: int | None  # None: every matching request until clear()
    method: str | None
    key: re.Pattern | None

    def matches(self, method: str, target: str) -> bool:
        return ((self.method is None or self.method == method) and (self.key is None or bool(self.key.search(target)))
                and (self.times is None or self.times > 0))


@dataclass(frozen=True)
class Seen:
    """One request as the proxy handled it: outcome is the fault it got, or "forwarded"."""

    method: str
    target: str
    outcome: str


class S3FaultProxy:
    def __init__(self, upstream: str):
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.requests: list[Seen] = []
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> S3FaultProxy:
        threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def inject(self, fault: str, times: int | None = 1, method: str | None = None, key: str | None = None) -> None:
        """The next `times` requests matching method and key (every one if times is None) get `fault`."""
        if fault not in FAULTS:
            raise ValueError(f"fault {fault!r}: expected one of {FAULTS}")
        with self._lock:
            self._rules.append(Rule(fault, times, method, re.compile(key) if key else None))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def injected(self, fault: str | None = None, key: str | None = None) -> int:
        """How many requests got `fault` (any fault if None) and, with `key`, have a target matching it."""
        return sum(1 for seen in self.requests if seen.outcome != "forwarded" and fault in (None, seen.outcome)
                   and (key is None or re.search(key, seen.target)))

    def _take(self, method: str, target: str) -> str | None:
        """The fault this request gets (the first matching rule, one of its `times` used up), or None."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, target):
                    if rule.times is not None:
                        rule.times -= 1
                    self.requests.append(Seen(method, target, rule.fault))
                    return rule.fault
            self.requests.append(Seen(method, target, "forwarded"))
            return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects

    def do_GET(self):
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def log_message(self, *args):  # quiet: pytest shows what the tests assert instead
        pass

    def _handle(self) -> None:
        body = self._read_body()  # always, so a refused request leaves the connection in step
        fault = self.server.proxy._take(self.command, unquote(self.path))
        if fault in ERRORS:
            self._send(*self._error(*ERRORS[fault]))
            return
        status, headers, payload = self._forward(body)
        if fault == "drop":
            whole = self._serialize(status, headers, payload)
            # Half the body; with no body, half the status line: a client takes headers cut short at EOF for
            # a whole answer, so cutting there would not be a dropped connection to it.
            status_line = whole.index(b"\r\n")
            head = len(whole) - len(payload)
            self.wfile.write(whole[: head + len(payload) // 2] if payload else whole[: status_line // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self._send(status, headers, payload)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = b""  # forwarded as it came, chunk framing and all, under the same header
            while True:
                line = self.rfile.readline()
                raw += line
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (trailer := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                        raw += trailer
                    return raw + b"\r\n"
                raw += self.rfile.read(size + 2)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self.server.proxy.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            connection.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None,
                               headers=headers)
            response = connection.getresponse()
            payload = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP | {"transfer-encoding"}]
            if self.command != "HEAD":  # a HEAD answer keeps the object's Content-Length and has no body
                kept = [(k, v) for k, v in kept if k.lower() != "content-length"] + [("Content-Length", str(len(payload)))]
            return response.status, kept, payload
        finally:
            connection.close()

    def _error(self, status: int, code: str, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
        request_id = uuid.uuid4().hex[:16].upper()
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
               f"<Resource>{urlparse(self.path).path}</Resource><RequestId>{request_id}</RequestId></Error>").encode()
        payload = b"" if self.command == "HEAD" else xml  # S3 answers a HEAD with the status alone
        return status, [("Content-Type", "application/xml"), ("x-amz-request-id", request_id),
                        ("Content-Length", str(len(payload)))], payload

    def _serialize(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> bytes:
        reason = http.client.responses.get(status, "")
        head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        return head.encode("latin-1") + (b"" if self.command == "HEAD" else payload)

    def _send(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        self.wfile.write(self._serialize(status, headers, payload))
        self.wfile.flush()
