"""A TCP forwarder whose open connections a test can cut, as a flaky network would.

A browser's own offline switch leaves a response that is already streaming
alone; cutting the sockets under it is what a dropped Wi-Fi does.
"""

import socket
import threading
from types import TracebackType


class CuttableProxy:
    """Forward 127.0.0.1:<port> to a target port; :meth:`cut` drops every open connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass  # the other direction closed it, or the test cut it: the pair is done
        finally:
            for end in (source, sink):
                self._close(end)

    def _close(self, end: socket.socket) -> None:
        with self.lock:
            if end in self.open:
                self.open.remove(end)
        try:
            end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected any more
        end.close()

    def cut(self) -> None:
        """Drop every connection open now; new ones go through as before."""
        with self.lock:
            ends = list(self.open)
        self.cuts += 1
        for end in ends:
            self._close(end)

    def close(self) -> None:
        """Stop accepting and drop everything."""
        self.listener.close()
        self.cut()

    def __enter__(self) -> "CuttableProxy":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
