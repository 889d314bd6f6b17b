"""The exporter's HTTP server: a landing page, `/metrics`, and the graphs at `/graphs/`.

One thread per connection (daemon threads), so a slow scrape never holds up another,
and the poll job runs on its own thread anyway. What a client can take is bounded:
at most `max_connections` at once (more are refused at once with 503), every
connection has `request_timeout` seconds in total (a watchdog shuts down the socket
of one that takes longer, however slowly it trickles bytes), request lines and
headers are bounded by http.server, and no request body is ever read.

TLS (a certificate and key file) and HTTP basic auth with bcrypt-hashed passwords
(as in Prometheus' web-config file) are both off unless configured. The TLS handshake
happens on the connection's own thread, under the same timeout.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import html
import logging
import mimetypes
import os
import re
import secrets
import socket
import ssl
import stat
import threading
import time
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Mapping
from urllib.parse import unquote, urlsplit

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

log = logging.getLogger("ctxmon.http")

DEFAULT_LISTEN = "127.0.0.1:9717"
_BCRYPT_HASH = re.compile(r"\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}")


def _version() -> str:
    try:
        from ctxmon import __version__

        return __version__
    except ImportError:
        return "unknown"


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` or `[v6addr]:port` -> (host, port). ValueError with a one-line message."""
    text = listen.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":") or not host:
            raise ValueError(f"listen address {listen!r}: expected [v6addr]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(
                f"listen address {listen!r}: expected host:port, e.g. {DEFAULT_LISTEN}"
            )
        if ":" in host:
            raise ValueError(f"listen address {listen!r}: write IPv6 addresses as [addr]:port")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"listen address {listen!r}: port must be a number 0-65535")
    return host, int(port_text)


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


class BasicAuth:
    """users: name -> bcrypt hash ("$2y$10$..." as `htpasswd -nBC 10` prints it).

    Checking a bcrypt hash costs tens of milliseconds by design; Prometheus scrapes
    every few seconds with the same password, so a successful check is remembered
    (as a keyed hash of the password, never the password) for a bounded number of
    credentials. An unknown user costs as much as a wrong password.
    """

    CACHE_SIZE = 64

    def __init__(self, users: Mapping[str, str]):
        import bcrypt

        self._bcrypt = bcrypt
        self.users: dict[str, bytes] = {}
        costs = []
        for user, hashed in users.items():
            m = _BCRYPT_HASH.fullmatch(hashed or "")
            if not m:
                raise ValueError(f"basic auth user {user!r}: password is not a bcrypt hash")
            costs.append(int(m.group(1)))
            self.users[user] = hashed.encode("ascii")
        if not self.users:
            raise ValueError("basic auth: no users")
        self._dummy = bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=max(4, min(costs))))
        self._key = secrets.token_bytes(32)
        self._verified: set[tuple[str, bytes]] = set()
        self._lock = threading.Lock()

    def check(self, user: str, password: str) -> bool:
        pw = password.encode("utf-8", "surrogateescape")
        token = (user, hmac.new(self._key, pw + b"\0" + self.users.get(user, b""),
                                hashlib.sha256).digest())
        with self._lock:
            if token in self._verified:
                return True
        hashed = self.users.get(user)
        try:
            ok = self._bcrypt.checkpw(pw, hashed if hashed is not None else self._dummy)
        except ValueError:  # e.g. bcrypt refuses passwords over 72 bytes
            ok = False
        ok = ok and hashed is not None
        if ok:
            with self._lock:
                if len(self._verified) >= self.CACHE_SIZE:
                    self._verified.clear()
                self._verified.add(token)
        return ok

    def check_header(self, header: str | None) -> bool:
        """An `Authorization: Basic ...` header value."""
        scheme, _, cred = (header or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            raw = base64.b64decode(cred.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return False
        user, sep, password = raw.partition(":")
        return bool(sep) and self.check(user, password)


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


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    sys_version = ""  # do not announce the Python version
    # Errors to unparsable request lines get a status line too (not HTTP/0.9's bare body).
    default_request_version = "HTTP/1.0"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._route(send_body=True)

    def do_HEAD(self) -> None:
        self._route(send_body=False)

    def _route(self, send_body: bool) -> None:
        app = self.server.app
        if app.auth is not None and not app.auth.check_header(self.headers.get("Authorization")):
            self._send(HTTPStatus.UNAUTHORIZED, b"401 Unauthorized\n", "text/plain",
                       send_body, {"WWW-Authenticate": 'Basic realm="ctxmon", charset="UTF-8"'})
            return
        path = urlsplit(self.path).path
        if path == "/":
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
            registry = self.server.app.registry
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
            parts = self.server.app.gzip.compress(parts)
            headers["Content-Encoding"] = "gzip"
        self._send(HTTPStatus.OK, parts, CONTENT_TYPE_PLAIN_0_0_4, send_body, headers)

    def _graph_file(self, rel: str, send_body: bool) -> None:
        full = self.server.app.resolve_graph(rel)
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for a client that hangs
    request_queue_size = 128

    def __init__(self, address, family, app: "MetricsServer"):
        self.address_family = family
        self.app = app
        self.slots = threading.BoundedSemaphore(app.max_connections)
        self._watch_lock = threading.Lock()
        self._deadlines: dict[int, tuple[float, int]] = {}  # id -> (deadline, fd)
        super().__init__(address, _Handler)
        _Handler.server_version = f"ctxmon/{_version()}"

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # "[::]" serves IPv4 too unless the admin says otherwise in sysctl.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            # Full: refuse at once instead of queueing behind slow clients. A fresh
            # socket's send buffer takes this without blocking.
            if self.app.ssl_context is None:
                try:
                    request.setblocking(False)
                    request.send(b"HTTP/1.0 503 Service Unavailable\r\n"
                                 b"Content-Length: 0\r\nRetry-After: 1\r\n\r\n")
                except OSError:
                    pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def finish_request(self, request, client_address) -> None:
        timeout = self.app.request_timeout
        request.settimeout(timeout)
        token = id(request)
        with self._watch_lock:
            self._deadlines[token] = (time.monotonic() + timeout, request.fileno())
        conn = request
        try:
            ctx = self.app.ssl_context
            if ctx is not None:
                try:
                    # Same fd, same timeout; the handshake under the watchdog too.
                    conn = ctx.wrap_socket(request, server_side=True,
                                           do_handshake_on_connect=False)
                    conn.do_handshake()
                except (OSError, ValueError) as e:
                    log.debug("%s: TLS handshake failed: %s", client_address[0], e)
                    return
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            # Stop watching the fd before it is closed (here, or by shutdown_request
            # right after), so the watchdog never touches a reused fd number.
            with self._watch_lock:
                self._deadlines.pop(token, None)
            if conn is not request:
                conn.close()

    def expire(self) -> None:
        """Shut down (not close: their threads close them) connections past their deadline."""
        now = time.monotonic()
        with self._watch_lock:
            for token, (deadline, fd) in list(self._deadlines.items()):
                if now < deadline:
                    continue
                del self._deadlines[token]
                try:
                    s = socket.socket(fileno=fd)
                except OSError:
                    continue
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                finally:
                    s.detach()  # the fd stays owned by the connection's thread

    def handle_error(self, request, client_address) -> None:
        # A client going away mid-response is routine, not a traceback in the log.
        log.debug("request from %s failed", client_address[0], exc_info=True)


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
        max_connections: int = 128,
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
        self.gzip = GzipPrefixCache()
        self.graphs_dir = graphs_dir
        self._graphs_root = os.path.realpath(graphs_dir) if graphs_dir else None
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self._httpd: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        """The bound port (the real one when listening on port 0)."""
        if self._httpd is None:
            return self._port
        return self._httpd.server_address[1]

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"

    def start(self) -> None:
        if self._httpd is not None:
            return
        try:
            infos = socket.getaddrinfo(self.host, self._port, 0, socket.SOCK_STREAM, 0,
                                       socket.AI_PASSIVE)
        except socket.gaierror as e:
            raise OSError(errno.EADDRNOTAVAIL, f"listen address {self.listen!r}: {e}") from None
        family, _, _, _, sockaddr = infos[0]
        self._httpd = _Server(sockaddr, family, self)
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.25},
                             name="ctxmon-http", daemon=True),
            threading.Thread(target=self._watchdog, name="ctxmon-http-watchdog", daemon=True),
        ]
        for t in self._threads:
            t.start()
        log.info("serving metrics on %s://%s/metrics", self.scheme, self._address())

    def stop(self) -> None:
        httpd = self._httpd
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._httpd = None
        self._threads = []

    def _watchdog(self) -> None:
        tick = min(1.0, self.request_timeout / 4)
        while not self._stopping.wait(tick):
            httpd = self._httpd
            if httpd is not None:
                httpd.expire()

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
