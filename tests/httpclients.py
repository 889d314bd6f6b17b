"""Hostile and ordinary HTTP clients of the metrics endpoint, shared by
tests/test_http_attacks.py, tests/test_prometheus.py and benchmarks/http_bench.py
(benchmarks import this module; tests never import benchmarks).

The attackers come from other loopback addresses than the scraper (127.0.0.2,
127.0.0.3 ...), as they would from other hosts.
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import subprocess
import threading

HEADER = b"X-Flood: " + b"a" * (64 * 1024 - 11) + b"\r\n"  # a 64 KB header line
HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # a ClientHello's first bytes


def attacker_address(i: int) -> str:
    """127.0.0.2, 127.0.0.3 ... (the scraper is 127.0.0.1)."""
    assert 0 <= i < 250
    return f"127.0.0.{i + 2}"


def connect_from(addr: str, port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((addr, 0))
    s.connect(("127.0.0.1", port))
    return s


def exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data` raw on a new connection, end our side, and return all the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        return reply


def basic(user: str, password: str | bytes) -> str:
    raw = password if isinstance(password, bytes) else password.encode()
    return "Basic " + base64.b64encode(user.encode() + b":" + raw).decode()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def make_certificate(directory: str) -> tuple[str, str]:
    """A throwaway self-signed certificate for 127.0.0.1 made with the openssl CLI:
    (cert.pem, key.pem) in `directory`."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )
    return cert, key


# ------------------------------------------------------------------- the attacks


def flood(addr: str, port: int, stop: threading.Event, sent: list[int] | None = None) -> None:
    """99 headers of 64 KB each, the connection held open; again 0.5 s after the
    server hangs up. Bytes sent are added to `sent[0]`."""
    while not stop.is_set():
        try:
            with connect_from(addr, port) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                for _ in range(99):
                    if stop.is_set():
                        break
                    s.sendall(HEADER)
                    if sent is not None:
                        sent[0] += len(HEADER)
                stop.wait(1)
        except OSError:
            pass
        stop.wait(0.5)


def hold(s: socket.socket, stop: threading.Event, trickle: bytes = b"") -> None:
    """Keep `s` open until the server hangs up or `stop`: `trickle` sent every 0.5 s
    (slowloris: a header byte, never the end of the head), or nothing (a stalled TLS
    hello). A send to a closed connection raises OSError."""
    s.settimeout(0.5)
    while not stop.is_set():
        if trickle:
            s.send(trickle)
        try:
            if s.recv(4096) == b"":
                return
        except (TimeoutError, socket.timeout):
            pass


def slowloris(addr: str, port: int, stop: threading.Event) -> None:
    """A header byte every 0.5 s, never finished; reconnecting when cut."""
    while not stop.is_set():
        try:
            with connect_from(addr, port) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                hold(s, stop, b"X")
        except OSError:
            stop.wait(0.05)


def stall_tls(addr: str, port: int, stop: threading.Event, held: list[int] | None = None) -> None:
    """The start of a ClientHello, never finished; again when the server hangs up.
    Hellos sent are counted in `held[0]`."""
    while not stop.is_set():
        try:
            with connect_from(addr, port) as s:
                s.sendall(HELLO_START)
                if held is not None:
                    held[0] += 1
                hold(s, stop)
        except OSError:
            stop.wait(0.05)


def guess(addr: str, port: int, password: str, timeout: float = 10.0) -> int | str:
    """One password guess as user "prom" on a new connection: the status, or the
    name of the exception that ended it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(addr, 0))
    try:
        conn.request("GET", "/metrics", headers={"Authorization": basic("prom", password)})
        r = conn.getresponse()
        r.read()
        return r.status
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__
    finally:
        conn.close()
