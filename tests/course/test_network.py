"""course.network: Nagle's algorithm off on the server's sockets, and only there.

The sockets are made as Streamlit makes its listening one (``socket.socket(family)``:
protocol number 0, which asyncio's own TCP_NODELAY skips)."""

from __future__ import annotations

import socket
import sys

import pytest

from course import network


def nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@pytest.fixture
def sockets():
    """A server (listening socket, one accepted connection), its client end, and a second listener with no
    connection; everything closed afterwards."""
    opened: list[socket.socket] = []

    def listener() -> socket.socket:
        s = socket.socket(family=socket.AF_INET)  # proto 0, like Streamlit's
        s.bind(("127.0.0.1", 0))
        s.listen()
        opened.append(s)
        return s

    def connect(server: socket.socket) -> tuple[socket.socket, socket.socket]:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        opened.extend([client, accepted])
        return client, accepted

    yield listener, connect
    for s in opened:
        s.close()


@pytest.mark.parametrize("source", ["descriptors", "objects"])
def test_server_sockets_get_nodelay_and_client_sockets_keep_theirs(sockets, monkeypatch, source):
    listener, connect = sockets
    server = listener()
    client, accepted = connect(server)
    assert server.proto == 0 and nodelay(accepted) == 0  # the premise: nothing turned the delay off
    if source == "objects":  # a platform without /proc/self/fd: the socket objects the interpreter holds
        monkeypatch.setattr(network, "_FD_DIR", "/nonexistent/fd")
    changed = network.send_at_once()
    assert changed >= 2  # at least our listener and its connection (another test's server may be open too)
    assert nodelay(server) and nodelay(accepted)
    assert nodelay(client) == 0  # a client end: its local port is no listener's
    assert network.set_no_delay([server, client, accepted]) == 0  # already set ones are not counted again


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux passes TCP_NODELAY on to accepted sockets")
def test_connections_accepted_later_inherit_it(sockets):
    listener, connect = sockets
    server = listener()
    network.send_at_once()
    _, later = connect(server)
    assert nodelay(later) == 1


def test_set_no_delay_leaves_sockets_of_ports_nobody_listens_on(sockets):
    listener, connect = sockets
    server = listener()
    client, accepted = connect(server)
    # given only the connections (no listener among them), nothing is a server socket
    assert network.set_no_delay([client, accepted]) == 0
    assert nodelay(accepted) == 0
    # given the listener too, its connection is changed and the client end is not
    assert network.set_no_delay([server, client, accepted]) == 2
    assert nodelay(client) == 0


def test_a_closed_socket_or_an_unlistable_process_is_not_an_error(sockets, monkeypatch):
    listener, connect = sockets
    server = listener()
    _, accepted = connect(server)
    accepted.close()
    assert network.set_no_delay([server, accepted]) == 1  # the listener; the closed one is skipped

    def broken():
        raise PermissionError("no /proc")

    monkeypatch.setattr(network, "_from_descriptors", broken)
    assert network.send_at_once() == 0
