"""A real HTTP server on 127.0.0.1 for download tests, serving files from a folder with per-path behaviours.

Use::

    with LoopbackServer(folder) as server:          # port 0: the system picks a free port
        server.truncate("b.zip", send=100)          # Content-Length of the whole file, 100 bytes, then close
        server.redirect("old.zip", server.url("b.zip"))
        server.slow("big.zip", chunk=512, delay=0.2)
        server.unannounced("c.zip")                 # no Content-Length: the body ends when the connection closes
        server.trickle("c.json", delay=0.3)         # the whole answer, status line included, a byte at a time
        fetch(server.url("b.zip"))
        assert server.requests == ["/b.zip"]        # every path asked for, in order

Paths not given a behaviour are served normally (200, exact Content-Length, the file's bytes); a path that names
no file in the folder (or leaves it) is a 404. The server runs in a daemon thread; leaving the ``with`` block (or
:meth:`LoopbackServer.stop`) shuts it down, ends slow responses and frees the port.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Behaviour:
    """How one path is answered: ``kind`` is ``normal``, ``truncated`` (``send`` bytes), ``redirect`` (to
    ``location`` with ``status``), ``slow`` (``chunk`` bytes every ``delay`` seconds), ``trickle`` (the whole
    answer, status line and headers too, one byte every ``delay`` seconds) or ``unannounced``."""

    kind: str = "normal"
    send: int = 0
    location: str = ""
    status: int = 302
    chunk: int = 1024
    delay: float = 0.2


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Quiet: tests read :attr:`LoopbackServer.requests` instead."""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        path = unquote(urlsplit(self.path).path)
        self.server.owner.requests.append(path)
        behaviour = self.server.owner.behaviours.get(path.lstrip("/"), Behaviour())
        if behaviour.kind == "redirect":
            self._head(behaviour.status, {"Location": behaviour.location, "Content-Length": "0"})
            return
        data = self.server.owner.file_bytes(path)
        if data is None:
            self._head(404, {"Content-Length": "0"})
            return
        if behaviour.kind == "trickle":
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            self._trickle(head + data, Behaviour("trickle", chunk=1, delay=behaviour.delay))
            return
        if behaviour.kind == "unannounced":
            self._head(200, {"Connection": "close"})
            self.wfile.write(data)
            self.close_connection = True
            return
        self._head(200, {"Content-Length": str(len(data)), "Content-Type": "application/octet-stream"})
        if behaviour.kind == "truncated":
            self.wfile.write(data[: behaviour.send])
            self.close_connection = True
        elif behaviour.kind == "slow":
            self._trickle(data, behaviour)
        else:
            self.wfile.write(data)

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _trickle(self, data: bytes, behaviour: Behaviour) -> None:
        try:
            for start in range(0, len(data), behaviour.chunk):
                if self.server.owner.stopping.is_set():
                    break
                self.wfile.write(data[start:start + behaviour.chunk])
                self.wfile.flush()
                time.sleep(behaviour.delay)
        except OSError:  # the client went away (a cancelled download): nothing more to send
            pass
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LoopbackServer


class LoopbackServer:
    """An HTTP server on ``127.0.0.1`` (a free port) serving the files under ``root``; see the module docstring."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.behaviours: dict[str, Behaviour] = {}
        self.requests: list[str] = []
        self.stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="loopback-http")
        self._thread.start()

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """The URL of ``path`` (relative to the served folder)."""
        return f"{self.origin}/{path.lstrip('/')}"

    def file_bytes(self, path: str) -> bytes | None:
        """The bytes of the served file at URL path ``path``, or None (missing, or outside the folder)."""
        target = (self.root / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.root) or not target.is_file():
            return None
        return target.read_bytes()

    def truncate(self, path: str, send: int) -> None:
        """Announce the whole file, send ``send`` bytes, close the connection."""
        self.behaviours[path] = Behaviour("truncated", send=send)

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        """Answer ``path`` with a redirect to ``location``."""
        self.behaviours[path] = Behaviour("redirect", location=location, status=status)

    def slow(self, path: str, chunk: int = 1024, delay: float = 0.2) -> None:
        """Send ``chunk`` bytes every ``delay`` seconds (a cancel can land in between)."""
        self.behaviours[path] = Behaviour("slow", chunk=chunk, delay=delay)

    def trickle(self, path: str, delay: float = 0.5) -> None:
        """Send the whole answer (status line, headers, body) one byte every ``delay`` seconds: every single wait
        is short, the whole answer takes for ever."""
        self.behaviours[path] = Behaviour("trickle", chunk=1, delay=delay)

    def unannounced(self, path: str) -> None:
        """Send the file without Content-Length; the connection's end ends the body."""
        self.behaviours[path] = Behaviour("unannounced")

    def stop(self) -> None:
        """Shut the server down (ending slow responses) and free its port; safe to call twice."""
        if not self.stopping.is_set():
            self.stopping.set()
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


_BUNDLES: dict[str, Path] = {}


def real_bundle_zip() -> Path:
    """A real (untrained) segmentation bundle as a .zip, built once per test process (it imports TensorFlow)."""
    import tempfile

    from helpers_security import make_tiny_bundle

    from MedAnalysisLib.safe_archive import zip_directory

    if "zip" not in _BUNDLES:
        folder = Path(tempfile.mkdtemp(prefix="medanalysis-test-catalog-"))
        _BUNDLES["zip"] = zip_directory(make_tiny_bundle(folder / "tiny"), folder / "tiny.zip")
    return _BUNDLES["zip"]


def catalog_entry(model_id: str, data: bytes, url: str, **overrides: object) -> dict:
    """A catalog entry for ``data`` (the tiny bundle of :func:`real_bundle_zip`: CT segmentation, background +
    organ) served at ``url``; ``overrides`` replace fields."""
    return {"id": model_id, "version": "1.0.0", "title": f"Model {model_id}", "task": "segmentation",
            "modality": "CT", "body_part": "abdomen", "labels": [{"value": 0, "name": "background"},
                                                               {"value": 1, "name": "organ"}],
            "description": "A tiny test model.", "license": "CC-BY-4.0", "intended_use": "Tests only.",
            "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "urls": [url], **overrides}
