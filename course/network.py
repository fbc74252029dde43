"""The server's replies sent at once: Nagle's algorithm off on the app server's TCP sockets.

Why: Streamlit binds its listening socket itself, as ``socket.socket(family)``,
whose protocol number is 0, not ``IPPROTO_TCP``. asyncio sets ``TCP_NODELAY``
only on sockets whose protocol number is ``IPPROTO_TCP``
(``asyncio.base_events._set_nodelay``), so every connection the server accepts
keeps Nagle's algorithm on (RFC 896). A reply written in two parts (the headers,
then a short body) then holds its second part back until the browser has
acknowledged the first, and the browser delays that acknowledgement: 40 ms on
Linux. A first visit fetches about 140 script files over six keep-alive
connections, and each small one after the first few waited those 40 ms: in
Chromium 61 of the files took 0.47 s from Streamlit's server, 0.13 s from
Python's ``http.server``. Websocket messages (the page's content) wait the same way.

:func:`send_at_once` turns the delay off on the server's sockets: every
listening TCP socket of this process (on Linux a connection accepted later
inherits the option) and every connection accepted on one of their ports,
including those already open (the current page's own). It leaves client
sockets to other servers alone. No Streamlit, no torch.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
from collections.abc import Iterable, Iterator

log = logging.getLogger(__name__)

_INET = (socket.AF_INET, socket.AF_INET6)
_FD_DIR = "/proc/self/fd"  # Linux: every descriptor of this process


def _tcp(sock: socket.socket) -> bool:
    return sock.family in _INET and sock.type == socket.SOCK_STREAM


def _listening(sock: socket.socket) -> bool:
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:  # not an option on this platform
        return False


def _local_port(sock: socket.socket) -> int | None:
    try:
        return sock.getsockname()[1]
    except (OSError, IndexError, TypeError):
        return None


def _from_descriptors() -> Iterator[socket.socket]:
    """A duplicate of each TCP socket this process has open (the caller closes it): the option set on a
    duplicate is set on the socket itself."""
    for name in os.listdir(_FD_DIR):
        try:
            if not os.readlink(os.path.join(_FD_DIR, name)).startswith("socket:"):
                continue
            fd = os.dup(int(name))
        except (OSError, ValueError):  # closed meanwhile (listing the directory opened one descriptor)
            continue
        try:
            sock = socket.socket(fileno=fd)
        except OSError:  # not an internet socket (a Unix one, a netlink one)
            os.close(fd)
            continue
        if _tcp(sock):
            yield sock
        else:
            sock.close()


def _from_objects() -> Iterator[socket.socket]:
    """Where descriptors cannot be listed: the TCP socket objects the interpreter holds (not closed by the
    caller: they are the originals)."""
    for obj in gc.get_objects():
        if isinstance(obj, socket.socket) and obj.fileno() != -1 and _tcp(obj):
            yield obj


def set_no_delay(socks: Iterable[socket.socket]) -> int:
    """``TCP_NODELAY`` on each listening socket in ``socks`` and on each connection accepted on one of their
    ports; how many sockets were changed (already set ones not counted)."""
    socks = list(socks)
    ports = {_local_port(s) for s in socks if _listening(s)}
    ports.discard(None)
    changed = 0
    for sock in socks:
        if _local_port(sock) not in ports:
            continue  # a client socket, or a connection to another server
        try:
            if not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                changed += 1
        except OSError as exc:  # closed meanwhile: nothing to speed up
            log.debug("TCP_NODELAY not set on %r: %s", sock, exc)
    return changed


def send_at_once() -> int:
    """Turn Nagle's algorithm off on this process's server sockets (module docstring); how many were
    changed. Never raises: a server that keeps the delay is slower, not broken."""
    try:
        if os.path.isdir(_FD_DIR):
            dups = list(_from_descriptors())
            try:
                return set_no_delay(dups)
            finally:
                for sock in dups:
                    sock.close()
        return set_no_delay(_from_objects())
    except Exception:  # noqa: BLE001 - an optimisation only
        log.warning("could not turn Nagle's algorithm off on the server's sockets", exc_info=True)
        return 0
