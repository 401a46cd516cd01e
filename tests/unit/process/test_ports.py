"""Free ports: distinct, and actually free to bind on 127.0.0.1 (a rendezvous or a local server takes them next)."""

import socket

from pipeline.process.ports import free_port, free_ports


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(5)
    assert len(set(ports)) == 5 and ports == sorted(ports)
    for port in [*ports, free_port()]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # raises if the port were taken
