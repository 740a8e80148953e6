"""Fetching bytes from a catalog server: one ``GET``, same-origin redirects, a cap on what is read, and Cancel.

The request runs in a daemon thread that hands chunks over a small queue, so the caller checks its stop flag at
least every :data:`POLL_S` seconds however slowly the server sends (a slow or stalled server never holds up a
Cancel); on Cancel the socket is shut down, which ends the thread's blocked read. ``timeout`` is the socket timeout:
how long connecting, or waiting for the next bytes, may take (a bundle download, long and cancellable, fails when
no byte arrives for that long). A ``deadline`` (a :func:`time.monotonic` instant) bounds the whole exchange
(connect, redirects, headers and body): :func:`fetch_document` sets one ``timeout`` after it starts, so a server
trickling a byte at a time cannot hold a catalog read for longer than that.

Every URL passes :func:`~MedAnalysisLib.catalog.sources.check_web_url` before anything connects; a redirect is
followed only to the same origin (scheme, host, port) as the first URL, at most :data:`MAX_REDIRECTS` hops.
Failures of the network (refused connections, unknown hosts, timeouts, TLS errors, HTTP errors) become one
:class:`~MedAnalysisLib.errors.InputError` line saying what was expected and what was found.
"""

from __future__ import annotations

import http.client
import queue
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin, urlsplit

from MedAnalysisLib.catalog.sources import Origin, check_web_url
from MedAnalysisLib.errors import CancelledError, InputError
from MedAnalysisLib.sanitize import terminal_field

MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024
#: How often the caller checks its stop flag while waiting for bytes.
POLL_S = 0.2
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme.lower() == "https":
        context = ssl.create_default_context()
        return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=context), target
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout), target


class DeadlineError(TimeoutError):
    """The whole exchange did not finish by its deadline."""


def _describe(error: BaseException) -> str:
    if isinstance(error, DeadlineError):
        return "no complete answer within the time limit (timed out)"
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "no answer in time (timed out)"
    if isinstance(error, http.client.IncompleteRead):
        return "a connection closed early"
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return f"{type(error).__name__}: {terminal_field(text, 200)}"


class _Request:
    """One GET in a daemon thread; events ``("head", status, reason, headers)``, ``("data", bytes)``, ``("end",)``
    and ``("error", exception)`` arrive on :attr:`events`."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.connection, self._target = _connection(url, timeout)
        self.events: queue.Queue = queue.Queue(maxsize=16)
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="medanalysis-download")
        self._thread.start()

    def _put(self, event: tuple) -> bool:
        while not self._cancelled.is_set():
            try:
                self.events.put(event, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            self.connection.request("GET", self._target, headers={"Accept-Encoding": "identity",
                                                                  "User-Agent": "medanalysis"})
            response = self.connection.getresponse()
            if not self._put(("head", response.status, response.reason, response.headers)):
                return
            if response.status != 200:
                return
            while chunk := response.read1(CHUNK_BYTES):
                if not self._put(("data", chunk)):
                    return
            self._put(("end",))
        except Exception as error:  # noqa: BLE001 - every failure is handed to the caller, which words it
            if not self._cancelled.is_set():
                self._put(("error", error))

    def next_event(self, stop_flag: Any, stall_s: float, deadline: float | None = None) -> tuple:
        """The next event; checks ``stop_flag`` every :data:`POLL_S` seconds (CancelledError when set); an
        ``("error", DeadlineError())`` once ``deadline`` has passed."""
        waited = 0.0
        while True:
            if stop_flag is not None and stop_flag.is_set():
                self.close()
                raise CancelledError(getattr(stop_flag, "reason", "") or "download cancelled")
            wait = POLL_S
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    self.close()
                    return ("error", DeadlineError())
            try:
                return self.events.get(timeout=wait)
            except queue.Empty:
                waited += POLL_S
                if waited > stall_s + 5 * POLL_S:  # the socket timeout should have fired: never wait for ever
                    self.close()
                    return ("error", TimeoutError())

    def close(self) -> None:
        """Stop the thread: shut the socket (ending a blocked read) and close the connection."""
        self._cancelled.set()
        sock = self.connection.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.connection.close()


class Download:
    """An open GET of a web URL after its redirects: :attr:`url` (the final URL), :attr:`length` (the
    Content-Length, or None) and :meth:`chunks`. Use as a context manager; leaving it closes the connection."""

    def __init__(self, url: str, *, what: str, timeout: float, stop_flag: Any = None,
                 deadline: float | None = None) -> None:
        self.what, self.timeout, self.stop_flag, self.deadline = what, timeout, stop_flag, deadline
        self.origin: Origin = check_web_url(url, what)
        self.url = url
        self.length: int | None = None
        self._request: _Request | None = None

    def __enter__(self) -> Download:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._request is not None:
            self._request.close()
            self._request = None

    def _fail(self, found: str) -> InputError:
        return InputError(f"expected {self.what} from {terminal_field(self.url, 200)}, got {found}")

    def _open(self) -> None:
        for _hop in range(MAX_REDIRECTS + 1):
            self.close()
            self._request = _Request(self.url, self._socket_timeout())
            event = self._request.next_event(self.stop_flag, self.timeout, self.deadline)
            if event[0] == "error":
                raise self._fail(_describe(event[1]))
            _kind, status, reason, headers = event
            if status == 200:
                self.length = self._content_length(headers)
                return
            if status not in REDIRECT_STATUSES:
                raise self._fail(f"HTTP {status} {terminal_field(reason, 100)}")
            self._follow(headers.get("Location"))
        raise InputError(f"expected {self.what} after at most {MAX_REDIRECTS} redirects, got more (a loop?)")

    def _socket_timeout(self) -> float:
        """The socket timeout: ``timeout``, or less when the deadline is nearer."""
        if self.deadline is None:
            return self.timeout
        return max(min(self.timeout, self.deadline - time.monotonic()), 0.01)

    def _follow(self, location: str | None) -> None:
        if not location:
            raise self._fail("a redirect without a Location")
        target = urljoin(self.url, location)
        origin = check_web_url(target, "a redirect target")
        if origin != self.origin:
            raise InputError(f"expected {self.what} to redirect only within {self.origin}, got a redirect to "
                             f"{origin} ({terminal_field(target, 200)}); it is not followed")
        self.url = target

    def _content_length(self, headers: Any) -> int | None:
        value = headers.get("Content-Length")
        if value is None:
            return None
        if not value.strip().isdigit():
            raise self._fail(f"an invalid Content-Length {terminal_field(value, 40)}")
        return int(value)

    def chunks(self) -> Iterator[bytes]:
        """The body, chunk by chunk; a failure in the middle is an InputError, Cancel a CancelledError."""
        assert self._request is not None
        while True:
            event = self._request.next_event(self.stop_flag, self.timeout, self.deadline)
            if event[0] == "data":
                yield event[1]
            elif event[0] == "end":
                return
            else:
                raise self._fail(f"{_describe(event[1])} while reading the body")


def fetch_document(url: str, *, what: str, max_bytes: int, timeout: float, stop_flag: Any = None,
                   deadline: float | None = None) -> tuple[bytes, str]:
    """The whole body of ``url`` (at most ``max_bytes``; more is refused as soon as it arrives) and the URL it was
    finally read from after redirects. Everything must arrive within ``timeout`` seconds in total (and by
    ``deadline`` when one is given)."""
    limit = time.monotonic() + timeout
    deadline = limit if deadline is None else min(deadline, limit)
    data = bytearray()
    with Download(url, what=what, timeout=timeout, stop_flag=stop_flag, deadline=deadline) as download:
        if download.length is not None and download.length > max_bytes:
            raise InputError(f"expected {what} of at most {max_bytes} bytes, the server announced "
                             f"{download.length}")
        for chunk in download.chunks():
            data += chunk
            if len(data) > max_bytes:
                raise InputError(f"expected {what} of at most {max_bytes} bytes, got more")
        if download.length is not None and len(data) != download.length:
            raise InputError(f"expected {what} of {download.length} bytes as announced, got {len(data)} before "
                             "the connection closed (truncated)")
        return bytes(data), download.url


__all__ = ["DeadlineError", "Download", "MAX_REDIRECTS", "fetch_document"]
