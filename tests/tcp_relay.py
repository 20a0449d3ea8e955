"""TCP between the code under test and a server on loopback, which a test can cut and restore:
the network failures a server must live through, without touching the server itself."""

from __future__ import annotations

import select
import socket
import threading


class Relay:
    def __init__(self, server_port: int):
        self._server_port = server_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """Drop every connection, and every new one at once, until ``restore``."""
        with self._lock:
            self._cut = True
            dropped = list(self._open)
        for sock in dropped:
            # Shut down only: the thread carrying it closes it, as it returns.
            _shut(sock)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self.cut()
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._listener.close()

    def passing(self, data: bytes, server: socket.socket) -> bool:
        """Whether bytes from the client go on to the server; False drops the connection (a
        subclass may first send the server what it likes)."""
        return True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refused = self._cut
            if refused:
                _shut(client)
                client.close()
            else:
                threading.Thread(target=self._carry, args=(client,), daemon=True).start()

    def _carry(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(("127.0.0.1", self._server_port))
        except OSError:
            _shut(client)
            client.close()
            return
        with self._lock:
            self._open.update((client, server))
        try:
            with client, server:
                self._pass_on(client, server)
        finally:
            with self._lock:
                self._open.difference_update((client, server))

    def _pass_on(self, client: socket.socket, server: socket.socket) -> None:
        while True:
            for source in select.select([client, server], [], [])[0]:
                try:
                    data = source.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                if source is client and not self.passing(data, server):
                    return  # both ends see the connection drop
                try:
                    (server if source is client else client).sendall(data)
                except OSError:
                    return


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
