"""The exporter's HTTP server: a landing page, `/metrics`, and the graphs at `/graphs/`.

Clients are untrusted until their password is checked, so what one can hold before
that is bounded, and holding it is cheap. One event-loop thread (selectors) accepts
connections, does TLS handshakes and reads each request's head (request line plus
headers, at most 64 KiB) without blocking. A complete head is answered on the loop
when that cannot block (/ and /metrics, no password or one already checked: no thread
hand-off for a scrape); files under /graphs/ on a small pool of worker threads;
passwords are checked on one bcrypt thread. The loop sends every reply. So a few
hundred idle, trickling or handshake-stalling clients cost a few kilobytes each and no
thread: a scraper's request is read and answered as soon as it arrives.

Bounds: `max_connections` at once overall and `max_per_client` per client address
(IPv6 per /64), more are refused at once with 503 (TLS: closed); `header_timeout`
seconds to finish the handshake and the head; `request_timeout` seconds in all; the
heads being read all together hold at most HEAD_BUDGET bytes; no request body is ever
read.

TLS (a certificate and key file, TLS >= 1.2) and HTTP basic auth with bcrypt-hashed
passwords (as in Prometheus' web-config file) are both off unless configured. Password
checks run on one bcrypt thread at most half its time, with a bounded queue (503 past
it); failed attempts are throttled per client address (see LoginThrottle).
"""

from __future__ import annotations

import base64
import collections
import errno
import hashlib
import heapq
import hmac
import html
import io
import ipaddress
import logging
import mimetypes
import os
import queue
import secrets
import selectors
import socket
import ssl
import stat
import threading
import time
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Callable, Mapping
from urllib.parse import unquote, urlsplit

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from exporters.addresses import parse_listen
from exporters.names import loggable
from exporters.passwords import bcrypt_cost
from exporters.sink import Complaints
from exporters.version import version as _version

log = logging.getLogger("ctxmon.http")

DEFAULT_LISTEN = "127.0.0.1:9717"
TURN = 0.1  # seconds: the event loop's longest wait, deadlines checked this often
IDLE_WAIT = 1.0  # seconds: its wait with no connection (refused-connection lines, a
# memory trim after a flood of heads: late by this at most)
HEAD_LIMIT = 64 * 1024  # request line + headers of one request, bytes
HEAD_BUDGET = 16 * 1024 * 1024  # all heads being read together, bytes
BCRYPT_MAX_BYTES = 72  # bcrypt (and htpasswd) use only the first 72 bytes
# Refusals made without checking a password (client throttled, checks queue full) are
# held this long, so a guesser cannot turn them into a flood of cheap requests.
REFUSAL_DELAY = 1.0


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header allows gzip (`gzip;q=0` refuses it)."""
    for item in (accept_encoding or "").split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip"):
            continue
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        return q > 0
    return False


def client_key(host: str) -> str:
    """Who a client is for the per-client bounds: its IPv4 address, or its IPv6 /64
    (one host can use a whole /64 as easily as one address)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return f"{ipaddress.IPv6Network((ip, 64), strict=False).network_address}/64"
    return str(ip)


class BasicAuth:
    """users: name -> bcrypt hash ("$2y$10$..." as `htpasswd -nBC 10` prints it).

    Checking a bcrypt hash costs tens of milliseconds by design; Prometheus scrapes
    every few seconds with the same password, so a successful check is remembered
    (as a keyed hash of the password, never the password) for a bounded number of
    credentials. An unknown user is checked against a dummy hash at the highest
    configured cost, so it costs as much as a known one. Passwords are cut to their
    first 72 bytes, as htpasswd and bcrypt itself do.
    """

    CACHE_SIZE = 64

    def __init__(self, users: Mapping[str, str]):
        import bcrypt

        self._bcrypt = bcrypt
        self.users: dict[str, bytes] = {}
        costs = []
        for user, hashed in users.items():
            try:
                costs.append(bcrypt_cost(hashed))
            except ValueError as e:
                raise ValueError(f"basic auth user {user!r}: {e}") from None
            self.users[user] = hashed.encode("ascii")
        if not self.users:
            raise ValueError("basic auth: no users")
        self._dummy = bcrypt.hashpw(secrets.token_bytes(16),
                                    bcrypt.gensalt(rounds=min(31, max(4, max(costs)))))
        self._key = secrets.token_bytes(32)
        self._verified: set[tuple[str, bytes]] = set()
        self._lock = threading.Lock()

    @staticmethod
    def parse(header: str | None) -> tuple[str, bytes] | None:
        """(user, password cut to 72 bytes) from an `Authorization: Basic ...` value."""
        scheme, _, cred = (header or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            raw = base64.b64decode(cred.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        user, sep, password = raw.partition(":")
        if not sep:
            return None
        return user, password.encode("utf-8", "surrogateescape")[:BCRYPT_MAX_BYTES]

    def _token(self, user: str, pw: bytes) -> tuple[str, bytes]:
        return user, hmac.new(self._key, pw + b"\0" + self.users.get(user, b""),
                              hashlib.sha256).digest()

    def cached(self, user: str, pw: bytes) -> bool:
        """Whether these credentials were verified before (cheap, no bcrypt)."""
        token = self._token(user, pw[:BCRYPT_MAX_BYTES])
        with self._lock:
            return token in self._verified

    def verify(self, user: str, pw: bytes) -> bool:
        """The bcrypt check (slow by design); remembered when it succeeds."""
        pw = pw[:BCRYPT_MAX_BYTES]
        hashed = self.users.get(user)
        try:
            ok = self._bcrypt.checkpw(pw, hashed if hashed is not None else self._dummy)
        except ValueError:  # e.g. a NUL byte in the password
            ok = False
        ok = ok and hashed is not None
        if ok:
            token = self._token(user, pw)
            with self._lock:
                if len(self._verified) >= self.CACHE_SIZE:
                    self._verified.clear()
                self._verified.add(token)
        return ok

    def check(self, user: str, password: str) -> bool:
        pw = password.encode("utf-8", "surrogateescape")
        return self.cached(user, pw) or self.verify(user, pw)

    def check_header(self, header: str | None) -> bool:
        """An `Authorization: Basic ...` header value (unthrottled; for tools and tests)."""
        creds = self.parse(header)
        return creds is not None and (self.cached(*creds) or self.verify(*creds))


class _Client:
    __slots__ = ("failures", "blocked_until", "last_failure", "in_flight")

    def __init__(self) -> None:
        self.failures = 0
        self.blocked_until = 0.0
        self.last_failure = 0.0
        self.in_flight = False


class LoginThrottle:
    """Failed password checks per client address. The first FREE failures in a row
    cost nothing more (typos); after the n-th one past them, that client's credentials
    that are not already known good are refused without a check for
    min(BASE * 2**(n-1), CAP) seconds; a client has at most one check in flight;
    a success or FORGET seconds without failure start it afresh. Failures are logged
    once per client per LOG_INTERVAL (with how many were not logged meanwhile)."""

    FREE = 5
    BASE = 1.0
    CAP = 60.0
    FORGET = 600.0
    LOG_INTERVAL = 60.0
    MAX_CLIENTS = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._clients: dict[str, _Client] = {}
        self._lock = threading.Lock()
        # per client: the sinks' log-once helper, repeating a client's line each interval
        self._logged = Complaints(log, every=self.LOG_INTERVAL, clock=clock)

    def begin(self, key: str) -> float:
        """0: go ahead and check (the client's one check in flight, end() must follow);
        else the seconds the client must wait."""
        now = self._clock()
        with self._lock:
            c = self._clients.get(key)
            if c is None:
                self._make_room(now)
                c = self._clients[key] = _Client()
            elif c.failures and now - c.last_failure > self.FORGET:
                c.failures, c.blocked_until = 0, 0.0
            if c.in_flight:
                return 1.0
            if now < c.blocked_until:
                self._logged.note(key)
                return c.blocked_until - now
            c.in_flight = True
            return 0.0

    def end(self, key: str, ok: bool, user: str) -> None:
        now = self._clock()
        with self._lock:
            c = self._clients.get(key)
            if c is None:
                return
            c.in_flight = False
            if ok:
                c.failures, c.blocked_until = 0, 0.0
                return
            c.failures += 1
            c.last_failure = now
            over = c.failures - self.FREE
            if over > 0:
                c.blocked_until = now + min(self.CAP, self.BASE * 2 ** min(over - 1, 30))
            failures, wait = c.failures, max(0.0, c.blocked_until - now)
            self._logged.complain(key, "failing", text=lambda unlogged: (
                f"failed basic auth login from {key} as {loggable(user)} ({failures} failed in "
                f"a row, {unlogged} more attempts since the last such line; next check in "
                f"{wait:.0f} s at the earliest)"))

    def cancel(self, key: str) -> None:
        """The check begun was not made after all (the queue was full): nothing counted."""
        with self._lock:
            c = self._clients.get(key)
            if c is not None:
                c.in_flight = False

    def _make_room(self, now: float) -> None:
        if len(self._clients) < self.MAX_CLIENTS:
            return
        for k, c in list(self._clients.items()):
            logged = self._logged.last_logged(k)
            if (not c.in_flight and c.blocked_until < now
                    and (logged is None or now - logged > self.LOG_INTERVAL)):
                del self._clients[k]
                self._logged.forget(k)
        while len(self._clients) >= self.MAX_CLIENTS:  # all busy: forget the oldest
            k = next(iter(self._clients))
            del self._clients[k]
            self._logged.forget(k)


class GzipPrefixCache:
    """gzip of a body whose first part repeats (the per-snapshot text): the compressor's
    state after that part is kept while it is the same object, and each scrape only
    compresses the rest on a copy. Prometheus asks for gzip on every scrape."""

    LEVEL = 5

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._first: bytes | None = None  # held, so `is` below cannot match a new object
        self._state: "zlib._Compress | None" = None
        self._out = b""

    def compress(self, parts: list[bytes]) -> list[bytes]:
        if not parts:
            parts = [b""]
        first = parts[0]
        with self._lock:
            if self._first is not first or self._state is None:
                z = zlib.compressobj(self.LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip
                self._out = z.compress(first)
                self._first, self._state = first, z
            z, out = self._state.copy(), self._out
        return [out, *(z.compress(p) for p in parts[1:]), z.flush()]


class _Out:
    """The exchange's wfile: what it writes, kept as parts (bodies are not copied)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(data)
        return len(data)

    def flush(self) -> None:
        pass


_NEEDS_CHECK = object()  # the credentials need a bcrypt check first
_NEEDS_WORKER = object()  # answering may block (files, the graph hook): not on the loop


class _Exchange(BaseHTTPRequestHandler):
    """One request, from its complete head to the bytes of its reply, on a worker thread.

    http.server's parsing and replies (status lines, error pages, 414/431/501 ...), with
    no socket: the event loop did the reading and does the writing."""

    sys_version = ""  # do not announce the Python version
    # Errors to unparsable request lines get a status line too (not HTTP/0.9's bare body).
    default_request_version = "HTTP/1.0"

    def __init__(self, app: "MetricsServer", head: bytes, client_address,
                 auth_ok: bool | None = None, inline: bool = False):  # noqa: no super().__init__
        self.app = app
        self.inline = inline  # on the event loop: only what cannot block
        self.needs_worker = False
        self.client_address = client_address
        self.key = client_key(client_address[0])
        self.auth_ok = auth_ok
        self.credentials: tuple[str, bytes] | None = None
        self.delay = 0.0  # seconds to hold the reply (refusals without a check)
        self.rfile = io.BytesIO(head)
        self.wfile = _Out()
        self.close_connection = True
        self.requestline = ""
        self.request_version = self.default_request_version
        self.command = None

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
        log.debug("%s %s", self.client_address[0], format % args)

    def run(self):
        """The reply's parts; or _NEEDS_CHECK when self.credentials need bcrypt first, or
        _NEEDS_WORKER when inline and the answer may block."""
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
        elif self.raw_requestline and self.parse_request():
            if self.command not in ("GET", "HEAD"):
                self.send_error(HTTPStatus.NOT_IMPLEMENTED,
                                f"Unsupported method ({self.command!r})")
            elif self._authorized():
                self._route(send_body=self.command == "GET")
                if self.needs_worker:
                    return _NEEDS_WORKER
            elif self.credentials is not None:
                return _NEEDS_CHECK
        return self.wfile.parts

    def error(self, status: HTTPStatus, message: str | None = None,
              headers: Mapping[str, str] | None = None) -> list[bytes]:
        """An error reply to a request not (fully) read."""
        self.send_response(status, message)
        body = f"{status.value} {message or status.phrase}\n".encode()
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        return self.wfile.parts

    def _authorized(self) -> bool:
        auth = self.app.auth
        if auth is None or self.auth_ok:
            return True
        if self.auth_ok is None:
            creds = auth.parse(self.headers.get("Authorization"))
            if creds is not None and auth.cached(*creds):
                return True
            if creds is not None:
                wait = self.app.throttle.begin(self.key)
                if not wait:
                    self.credentials = creds  # to check on the bcrypt thread
                    return False
                self.delay = REFUSAL_DELAY
                self._unauthorized(send_body=self.command == "GET",
                                   retry_after=max(1, int(wait + 0.999)))
                return False
        self._unauthorized(send_body=self.command == "GET")
        return False

    def _unauthorized(self, send_body: bool, retry_after: int = 0) -> None:
        # Throttled clients get the same 401 as a wrong password (no hint whether the
        # guess was checked), with Retry-After.
        headers = {"WWW-Authenticate": 'Basic realm="ctxmon", charset="UTF-8"'}
        if retry_after:
            headers["Retry-After"] = str(retry_after)
        self._send(HTTPStatus.UNAUTHORIZED, b"401 Unauthorized\n", "text/plain",
                   send_body, headers)

    def _route(self, send_body: bool) -> None:
        app = self.app
        path = urlsplit(self.path).path
        if self.inline and path not in ("/", "/metrics"):
            self.needs_worker = True
        elif path == "/":
            self._send(HTTPStatus.OK, app.landing_page(), "text/html; charset=utf-8", send_body)
        elif path == "/metrics":
            self._metrics(send_body)
        elif app.graphs_dir is not None and path == "/graphs":
            self._redirect("/graphs/", send_body)
        elif app.graphs_dir is not None and path.startswith("/graphs/"):
            self._graph_file(path[len("/graphs/"):], send_body)
        else:
            self._not_found(send_body)

    def _metrics(self, send_body: bool) -> None:
        try:
            registry = self.app.registry
            # exporters.prometheus.ExportRegistry renders faster (cached per snapshot)
            render = getattr(registry, "exposition", None)
            parts = render() if render is not None else [generate_latest(registry)]
        except Exception:
            log.exception("building /metrics failed")
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"500 metrics failed, see the log\n",
                       "text/plain", send_body)
            return
        headers = {"Vary": "Accept-Encoding"}
        if accepts_gzip(self.headers.get("Accept-Encoding")):
            parts = self.app.gzip.compress(parts)
            headers["Content-Encoding"] = "gzip"
        self._send(HTTPStatus.OK, parts, CONTENT_TYPE_PLAIN_0_0_4, send_body, headers)

    def _graph_file(self, rel: str, send_body: bool) -> None:
        hook = self.app.graph_hook
        if hook is not None:
            try:  # may draw the page now; bounded by the hook's own timeout
                hook(rel)
            except Exception:
                log.exception("graph hook failed")
        full = self.app.resolve_graph(rel)
        if full is None:
            self._not_found(send_body)
            return
        if os.path.isdir(full):
            if not self.path.split("?", 1)[0].endswith("/"):
                self._redirect(urlsplit(self.path).path + "/", send_body)
                return
            full = os.path.join(full, "index.html")
        try:
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            self._not_found(send_body)
            return
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                self._not_found(send_body)
                return
            ctype = mimetypes.guess_type(full)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype in ("application/javascript", "image/svg+xml"):
                ctype += "; charset=utf-8"
            self._send(HTTPStatus.OK, f.read(), ctype, send_body,
                       {"Cache-Control": "no-cache",
                        "Last-Modified": self.date_time_string(int(st.st_mtime))})

    def _not_found(self, send_body: bool) -> None:
        self._send(HTTPStatus.NOT_FOUND, b"404 Not Found\n", "text/plain", send_body)

    def _redirect(self, location: str, send_body: bool) -> None:
        self._send(HTTPStatus.MOVED_PERMANENTLY, b"", "text/plain", send_body,
                   {"Location": location})

    def _send(self, status: HTTPStatus, body: bytes | list[bytes], ctype: str,
              send_body: bool, headers: Mapping[str, str] | None = None) -> None:
        parts = [body] if isinstance(body, bytes) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(sum(len(p) for p in parts)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if send_body:
            for p in parts:
                self.wfile.write(p)


class _Workers:
    """Daemon threads taking jobs from a bounded queue (submit() says False when full)."""

    def __init__(self, count: int, name: str, max_queue: int, nice: int = 0):
        self._q: queue.Queue = queue.Queue()
        self.max_queue = max_queue
        self.nice = nice
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
                         for i in range(count)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable, *args) -> bool:
        if self._q.qsize() >= self.max_queue:
            return False
        self._q.put((fn, args))
        return True

    def stop(self) -> None:
        for _ in self._threads:
            self._q.put(None)

    def _run(self) -> None:
        if self.nice:
            try:  # Linux: a thread has its own nice value
                tid = threading.get_native_id()
                now = os.getpriority(os.PRIO_PROCESS, tid)
                os.setpriority(os.PRIO_PROCESS, tid, now + self.nice)
            except (OSError, AttributeError):
                pass
        while (job := self._q.get()) is not None:
            fn, args = job
            try:
                fn(*args)
            except Exception:
                log.exception("HTTP worker job failed")


_HANDSHAKE, _HEAD, _WORKING, _WRITING, _LINGER, _CLOSED = range(6)
_LINGER_SECONDS = 1.0  # after a reply, read and drop what the client still sends ...
_LINGER_BYTES = 256 * 1024  # ... so it sees the reply, not a reset; no more than this
_TLS_CHUNK = 16 * 1024


class _Conn:
    __slots__ = ("sock", "addr", "key", "state", "buf", "nl", "head_deadline", "deadline",
                 "out", "linger_until", "lingered", "events", "tls")

    def __init__(self, sock, addr, key: str, now: float, head_timeout: float,
                 timeout: float, tls: bool):
        self.sock = sock
        self.addr = addr
        self.key = key
        self.state = _HANDSHAKE if tls else _HEAD
        self.buf: bytearray | None = None
        self.nl = -1  # where the request line ends, once seen
        self.head_deadline = now + head_timeout
        self.deadline = now + timeout
        self.out: collections.deque[memoryview] = collections.deque()
        self.linger_until = 0.0
        self.lingered = 0
        self.events = 0
        self.tls = tls


def _head_end(buf: bytearray, nl: int, start: int) -> tuple[int, int]:
    """(first "\\n" or -1, end of the head or 0) scanning `buf` from `start`: the head
    ends with the first empty line after the request line (CRLF or bare LF)."""
    j = buf.find(b"\n", start)
    while j >= 0:
        if nl < 0:
            nl = j
        elif buf[j - 1] == 0x0A or (buf[j - 1] == 0x0D and buf[j - 2] == 0x0A):
            return nl, j + 1
        j = buf.find(b"\n", j + 1)
    return nl, 0


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class _Loop:
    """The event loop: accept, TLS handshakes, reading heads, writing replies."""

    def __init__(self, app: "MetricsServer", lsock: socket.socket):
        self.app = app
        self.lsock = lsock
        self.sel = selectors.DefaultSelector()
        self.sel.register(lsock, selectors.EVENT_READ, None)
        self.listening = True
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self.wake_r)
        self.conns: set[_Conn] = set()
        self.per_client: collections.Counter[str] = collections.Counter()
        self.buffered = 0  # bytes of heads being read, all connections together
        self.buffered_peak = 0  # since memory was last handed back
        self.done: collections.deque = collections.deque()  # (conn, parts, due) from workers
        self.held: list[tuple[float, int, _Conn, list[bytes]]] = []  # heap of held replies
        self.scratch = memoryview(bytearray(HEAD_LIMIT + 1))
        self.stopping = False
        self.next_sweep = 0.0
        self.accept_paused_until = 0.0
        self.refused = collections.Counter()  # why, for one log line a minute
        self.refused_logged = time.monotonic()

    # ------------------------------------------------------------ cross-thread

    def deliver(self, conn: _Conn, parts: list[bytes], delay: float = 0.0,
                wake: bool = True) -> None:
        """Send this reply, after `delay` s (the loop does all socket I/O)."""
        self.done.append((conn, parts, time.monotonic() + delay if delay else 0.0))
        if wake:  # from another thread
            self.wake()

    def wake(self) -> None:
        try:
            self.wake_w.send(b"\0")
        except OSError:  # full: a wake-up is pending anyway
            pass

    # ------------------------------------------------------------ the loop

    def run(self) -> None:
        try:
            while not self.stopping:
                try:
                    self.turn()
                except Exception:  # a bug must not end serving: log it, go on
                    log.exception("HTTP server loop")
                    time.sleep(0.1)
        finally:
            for conn in list(self.conns):
                self.close(conn)
            self.sel.close()
            self.lsock.close()
            self.wake_r.close()
            self.wake_w.close()

    def idle(self) -> bool:
        """No connection, nothing to send, accepting: no deadline runs, and every
        change comes as an event (a connection, or `wake` from another thread)."""
        return not (self.conns or self.done or self.held) and self.listening

    def turn(self) -> None:
        """One turn of the loop: the events, the replies due, the deadlines. Idle,
        it waits IDLE_WAIT between turns rather than TURN: ten wake-ups a second
        cost ~1.6 ms of CPU a second with nobody scraping, 16 ms a 10 s poll."""
        for key, _ in self.sel.select(IDLE_WAIT if self.idle() else TURN):
            if key.data is None:
                self.accept()
            elif key.data is self.wake_r:
                try:
                    while self.wake_r.recv(4096):
                        pass
                except OSError:
                    pass
            else:
                self.guarded(key.data, self.io, key.data)
        now = time.monotonic()
        while self.done:
            conn, parts, due = self.done.popleft()
            if due > now:
                heapq.heappush(self.held, (due, id(conn), conn, parts))
            else:
                self.guarded(conn, self.reply, conn, parts)
        while self.held and self.held[0][0] <= now:
            _, _, conn, parts = heapq.heappop(self.held)
            self.guarded(conn, self.reply, conn, parts)
        if now >= self.next_sweep:
            self.next_sweep = now + TURN
            self.sweep(now)

    def guarded(self, conn: _Conn, fn: Callable, *args) -> None:
        """fn(*args) for one connection: whatever it raises ends that connection only."""
        try:
            fn(*args)
        except (OSError, ValueError) as e:  # a reset, a TLS alert ...
            log.debug("%s: connection dropped: %s", conn.addr[0], e)
            self.close(conn)
        except Exception:
            log.exception("%s: connection failed", conn.addr[0])
            self.close(conn)

    def accept(self) -> None:
        app = self.app
        for _ in range(64):
            try:
                sock, addr = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of fds: stop accepting for a moment instead of spinning.
                    self.refused["out of file descriptors"] += 1
                    self.sel.unregister(self.lsock)
                    self.listening = False
                    self.accept_paused_until = time.monotonic() + 0.5
                log.debug("accept failed: %s", e)
                return
            key = client_key(addr[0])
            if len(self.conns) >= app.max_connections:
                self.refuse(sock, "connection limit")
                continue
            if self.per_client[key] >= app.max_per_client:
                self.refuse(sock, "per-client limit")
                continue
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if app.ssl_context is not None:
                    sock = app.ssl_context.wrap_socket(sock, server_side=True,
                                                       do_handshake_on_connect=False)
            except (OSError, ValueError) as e:
                log.debug("%s: dropped at accept: %s", addr[0], e)
                sock.close()
                continue
            now = time.monotonic()
            conn = _Conn(sock, addr, key, now, min(app.header_timeout, app.request_timeout),
                         app.request_timeout, app.ssl_context is not None)
            self.conns.add(conn)
            self.per_client[key] += 1
            self.want(conn, selectors.EVENT_READ)

    def refuse(self, sock: socket.socket, why: str) -> None:
        # Full: refuse at once instead of queueing. A fresh socket's send buffer takes
        # this without blocking. TLS clients are just closed (no handshake for them).
        self.refused[why] += 1
        if self.app.ssl_context is None:
            try:
                sock.setblocking(False)
                sock.send(b"HTTP/1.0 503 Service Unavailable\r\n"
                          b"Content-Length: 0\r\nRetry-After: 1\r\n\r\n")
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        sock.close()

    def want(self, conn: _Conn, events: int) -> None:
        if conn.events == events:
            return
        if conn.events == 0:
            self.sel.register(conn.sock, events, conn)
        elif events == 0:
            self.sel.unregister(conn.sock)
        else:
            self.sel.modify(conn.sock, events, conn)
        conn.events = events

    def io(self, conn: _Conn) -> None:
        if conn.state == _HANDSHAKE:
            self.handshake(conn)
        elif conn.state == _HEAD:
            self.read_head(conn)
        elif conn.state == _WRITING:
            self.write(conn)
        elif conn.state == _LINGER:
            self.linger(conn)

    def handshake(self, conn: _Conn) -> None:
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.want(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self.want(conn, selectors.EVENT_WRITE)
            return
        except (OSError, ValueError) as e:
            log.debug("%s: TLS handshake failed: %s", conn.addr[0], e)
            self.close(conn)
            return
        conn.state = _HEAD
        self.want(conn, selectors.EVENT_READ)
        self.read_head(conn)

    def read_head(self, conn: _Conn) -> None:
        while True:
            have = len(conn.buf) if conn.buf is not None else 0
            try:
                n = conn.sock.recv_into(self.scratch[:HEAD_LIMIT + 1 - have])
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                self.want(conn, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self.want(conn, selectors.EVENT_WRITE)
                return
            if n == 0:  # the client is done sending: what it sent is all the head
                if have:
                    self.dispatch(conn, bytes(conn.buf))
                else:
                    self.close(conn)
                return
            if self.buffered + n > HEAD_BUDGET:
                self.refuse_head(conn, HTTPStatus.SERVICE_UNAVAILABLE, None)
                return
            if conn.buf is None:
                conn.buf = bytearray()
            conn.buf += self.scratch[:n]
            self.buffered += n
            self.buffered_peak = max(self.buffered_peak, self.buffered)
            conn.nl, end = _head_end(conn.buf, conn.nl, max(0, have - 2))
            if end:
                self.dispatch(conn, bytes(conn.buf[:end]))
                return
            if len(conn.buf) > HEAD_LIMIT:
                if conn.nl < 0:
                    self.refuse_head(conn, HTTPStatus.REQUEST_URI_TOO_LONG, None)
                else:
                    self.refuse_head(conn, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                     "Request line and headers too long")
                return

    def drop_head(self, conn: _Conn) -> None:
        if conn.buf is not None:
            self.buffered -= len(conn.buf)
            conn.buf = None

    def refuse_head(self, conn: _Conn, status: HTTPStatus, message: str | None) -> None:
        self.drop_head(conn)
        headers = {"Retry-After": "1"} if status == HTTPStatus.SERVICE_UNAVAILABLE else None
        self.reply(conn, _Exchange(self.app, b"", conn.addr).error(status, message, headers))

    def dispatch(self, conn: _Conn, head: bytes) -> None:
        self.drop_head(conn)
        conn.state = _WORKING
        self.want(conn, 0)
        self.app.work(conn, head, None, inline=True)

    def reply(self, conn: _Conn, parts: list[bytes]) -> None:
        if conn.state == _CLOSED:
            return
        if not parts:  # nothing to say (an empty request)
            self.close(conn)
            return
        conn.out.extend(memoryview(p) for p in parts if p)
        conn.state = _WRITING
        self.want(conn, selectors.EVENT_WRITE)
        self.write(conn)

    def write(self, conn: _Conn) -> None:
        out = conn.out
        while out:
            part = out[0]
            try:
                n = conn.sock.send(part[:_TLS_CHUNK] if conn.tls else part)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                self.want(conn, selectors.EVENT_WRITE)
                return
            except ssl.SSLWantReadError:
                self.want(conn, selectors.EVENT_READ)
                return
            if n >= len(part):
                out.popleft()
            else:
                out[0] = part[n:]
        if conn.tls:
            self.close(conn)
            return
        # Half-close, then drop what the client still sends until it closes too: a
        # close() with unread bytes would reset the connection, losing the reply.
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(conn)
            return
        conn.state = _LINGER
        conn.linger_until = time.monotonic() + _LINGER_SECONDS
        self.want(conn, selectors.EVENT_READ)
        self.linger(conn)

    def linger(self, conn: _Conn) -> None:
        while True:
            try:
                n = conn.sock.recv_into(self.scratch)
            except (BlockingIOError, InterruptedError):
                return
            conn.lingered += n
            if n == 0 or conn.lingered > _LINGER_BYTES:
                self.close(conn)
                return

    def close(self, conn: _Conn) -> None:
        if conn.state == _CLOSED:
            return
        self.drop_head(conn)
        if conn.events:
            try:
                self.sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.events = 0
        conn.state = _CLOSED
        conn.out.clear()
        try:
            conn.sock.close()
        except OSError:
            pass
        self.conns.discard(conn)
        self.per_client[conn.key] -= 1
        if self.per_client[conn.key] <= 0:
            del self.per_client[conn.key]

    def sweep(self, now: float) -> None:
        """Close what is past its time: the handshake and head, the whole exchange, the
        lingering after a reply; resume accepting after running out of fds."""
        for conn in list(self.conns):
            if conn.state == _LINGER:
                if now >= conn.linger_until:
                    self.close(conn)
            elif now >= conn.deadline or (conn.state in (_HANDSHAKE, _HEAD)
                                           and now >= conn.head_deadline):
                log.debug("%s: timed out", conn.addr[0])
                self.close(conn)
        if self.buffered_peak > 1024 * 1024 and self.buffered == 0:
            # A flood of big heads is over: hand the freed memory back to the system
            # (glibc keeps freed small blocks in its arenas otherwise).
            self.buffered_peak = 0
            _malloc_trim()
        if not self.listening and now >= self.accept_paused_until and not self.stopping:
            self.sel.register(self.lsock, selectors.EVENT_READ, None)
            self.listening = True
        if self.refused and now - self.refused_logged >= 60:
            log.warning("refused connections in the last minute: %s", ", ".join(
                f"{n} ({why})" for why, n in self.refused.most_common(5)))
            self.refused.clear()
            self.refused_logged = now


class MetricsServer:
    """Serves `registry` at /metrics, a landing page at /, and `graphs_dir` at /graphs/."""

    def __init__(
        self,
        listen: str = DEFAULT_LISTEN,
        registry: Collector | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        basic_auth: Mapping[str, str] | None = None,
        graphs_dir: str | None = None,
        request_timeout: float = 10.0,
        max_connections: int = 512,
        max_per_client: int = 128,
        header_timeout: float = 5.0,
        workers: int = 4,
        graph_hook: Callable[[str], None] | None = None,
    ):
        if registry is None:
            raise ValueError("MetricsServer needs the registry to serve")
        self.listen = listen
        self.host, self._port = parse_listen(listen)
        self.registry = registry
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("TLS needs both a certificate and a key file")
        self.ssl_context: ssl.SSLContext | None = None
        if tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(tls_cert, tls_key)
            self.ssl_context = ctx
        self.auth = BasicAuth(basic_auth) if basic_auth else None
        self.throttle = LoginThrottle()
        self.gzip = GzipPrefixCache()
        self.graphs_dir = graphs_dir
        self._graphs_root = os.path.realpath(graphs_dir) if graphs_dir else None
        # Called with the (URL-encoded) path below /graphs/ before it is served, on an
        # answering thread; it returns within its own timeout (graphs.client draws a
        # context's missing or out-of-date page there, and lets fewer requests wait
        # at once than there are answering threads, so /metrics always has one).
        self.graph_hook = graph_hook
        self.request_timeout = request_timeout
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.worker_count = workers
        self.workers: _Workers | None = None
        self._bcrypt: _Workers | None = None
        self._loop: _Loop | None = None
        self._thread: threading.Thread | None = None
        self._bound_port = 0
        _Exchange.server_version = f"ctxmon/{_version()}"

    @property
    def port(self) -> int:
        """The bound port (the real one when listening on port 0)."""
        return self._bound_port if self._loop is not None else self._port

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"

    def start(self) -> None:
        if self._loop is not None:
            return
        try:
            infos = socket.getaddrinfo(self.host, self._port, 0, socket.SOCK_STREAM, 0,
                                       socket.AI_PASSIVE)
        except socket.gaierror as e:
            raise OSError(errno.EADDRNOTAVAIL, f"listen address {self.listen!r}: {e}") from None
        family, _, _, _, sockaddr = infos[0]
        lsock = socket.socket(family, socket.SOCK_STREAM)
        try:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # "[::]" serves IPv4 too unless the admin says otherwise in sysctl.
                lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            lsock.bind(sockaddr)
            lsock.listen(1024)
            lsock.setblocking(False)
            self._bound_port = lsock.getsockname()[1]
        except BaseException:
            lsock.close()
            raise
        # Every queued request holds a connection: the connection limit bounds the queue.
        self.workers = _Workers(self.worker_count, "ctxmon-http-worker",
                                max_queue=self.max_connections)
        # One bcrypt thread: all password checks together take at most half a core, and
        # at a lower priority than everything else (a busy host runs scrapes first).
        self._bcrypt = _Workers(1, "ctxmon-http-bcrypt", max_queue=8, nice=10)
        self._loop = _Loop(self, lsock)
        self._thread = threading.Thread(target=self._loop.run, name="ctxmon-http", daemon=True)
        self._thread.start()
        log.info("serving metrics on %s://%s/metrics", self.scheme, self._address())

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        loop.stopping = True
        loop.wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        loop.lsock.close()  # released even if the loop thread did not finish
        for w in (self.workers, self._bcrypt):
            if w is not None:
                w.stop()
        self._loop = self._thread = self.workers = self._bcrypt = None

    # ------------------------------------------------------------ worker side

    def work(self, conn: _Conn, head: bytes, auth_ok: bool | None,
             inline: bool = False) -> None:
        """The reply to one request head, handed to the loop to send. Inline (on the
        loop, saving two thread hand-offs per scrape) for what cannot block: parsing,
        remembered credentials, / and /metrics; the rest on a worker."""
        loop = self._loop
        if loop is None:
            return
        ex = _Exchange(self, head, conn.addr, auth_ok, inline)
        try:
            parts = ex.run()
        except Exception:
            log.exception("request from %s failed", conn.addr[0])
            parts = _Exchange(self, b"", conn.addr).error(HTTPStatus.INTERNAL_SERVER_ERROR)
        if parts is _NEEDS_WORKER:
            workers = self.workers
            if workers is not None and workers.submit(self.work, conn, head, None):
                return
            parts = _Exchange(self, b"", conn.addr).error(
                HTTPStatus.SERVICE_UNAVAILABLE, None, {"Retry-After": "1"})
        if parts is _NEEDS_CHECK:
            bcrypt_pool = self._bcrypt
            if bcrypt_pool is not None and bcrypt_pool.submit(self._check, conn, head,
                                                              ex.key, ex.credentials):
                return
            self.throttle.cancel(ex.key)
            parts = _Exchange(self, b"", conn.addr).error(
                HTTPStatus.SERVICE_UNAVAILABLE, "Too many password checks at once",
                {"Retry-After": "1"})
            ex.delay = REFUSAL_DELAY
        loop.deliver(conn, parts, ex.delay, wake=not inline)

    def _check(self, conn: _Conn, head: bytes, key: str, creds: tuple[str, bytes]) -> None:
        """On the bcrypt thread: check, count, resume the request; then rest as long as
        the check took, so checks use at most half of one core."""
        started = time.monotonic()
        ok = False
        try:
            ok = self.auth.verify(*creds) if self.auth is not None else False
        finally:  # whatever happens, the client's check is over
            self.throttle.end(key, ok, creds[0])
        took = time.monotonic() - started
        workers, loop = self.workers, self._loop
        if workers is None or loop is None:
            return
        if not workers.submit(self.work, conn, head, ok):
            loop.deliver(conn, _Exchange(self, b"", conn.addr).error(
                HTTPStatus.SERVICE_UNAVAILABLE, None, {"Retry-After": "1"}))
        time.sleep(took)

    def _address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def landing_page(self) -> bytes:
        links = ['<li><a href="metrics">Metrics</a> (Prometheus text format)</li>']
        if self.graphs_dir is not None:
            links.append('<li><a href="graphs/">Graphs</a></li>')
        page = (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>ctxmon on {html.escape(socket.gethostname())}</title></head>\n<body>"
            f"<h1>ctxmon {html.escape(_version())}</h1>"
            f"<p>Per-context monitor on {html.escape(socket.gethostname())}.</p>"
            f"<ul>{''.join(links)}</ul></body></html>\n"
        )
        return page.encode("utf-8")

    def resolve_graph(self, rel: str) -> str | None:
        """The file or directory `rel` (URL-encoded, below /graphs/) names inside the
        graphs folder, symlinks resolved; None when it would lie outside or is bad."""
        root = self._graphs_root
        if root is None:
            return None
        try:
            name = unquote(rel, errors="strict")
        except UnicodeDecodeError:
            return None
        if "\0" in name or name.startswith("/"):
            return None
        # Dot-files are the renderer's own (state, lock, files being written); every
        # page and PNG name is encoded never to start with a dot.
        if any(part.startswith(".") for part in name.split("/")):
            return None
        full = os.path.realpath(os.path.join(root, name))
        if full != root and not full.startswith(root + os.sep):
            return None
        return full if os.path.exists(full) else None
