"""A TCP proxy for fault tests: forwards bytes to the server until told to freeze.

A frozen connection stays open but silently stops forwarding in both directions, which is what a
dead peer behind a NAT or a stuck load balancer looks like: no RST, no FIN, just nothing.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import List, Tuple


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream: Tuple[str, int] = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self._frozen: List[threading.Event] = []
        self._freeze_new = False
        self._closed = threading.Event()
        self._socks: List[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def freeze_existing(self) -> None:
        """Stall every open connection; connections made later work normally."""
        with self._lock:
            for ev in self._frozen:
                ev.set()

    def freeze_all(self) -> None:
        """Stall every open connection and every later one."""
        with self._lock:
            self._freeze_new = True
            for ev in self._frozen:
                ev.set()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._upstream)
            except OSError:
                client.close()
                continue
            frozen = threading.Event()
            with self._lock:
                if self._freeze_new:
                    frozen.set()
                self._frozen.append(frozen)
                self._socks += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst, frozen), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, frozen: threading.Event) -> None:
        try:
            while not self._closed.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if frozen.is_set():
                    # Swallow everything from now on, without closing: a silent stall.
                    self._closed.wait()
                    return
                dst.sendall(data)
        except OSError:
            pass
        if not frozen.is_set():
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
