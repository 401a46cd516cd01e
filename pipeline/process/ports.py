"""Free TCP ports on 127.0.0.1: for a rendezvous (torchrun, DeepSpeed), local servers, the tests' servers.

    port = free_port()
    ports = free_ports(3)       # distinct from each other
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now; 0 is not an option: torchrun hangs on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (the kernel may hand the same one out twice when each socket is closed at once)."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)
