"""Safe, collision-free file names for untrusted context and interface names.

Context names come from guests (VServer names, cgroup paths, container names) and
interface names from their network namespaces, so they may hold `/`, `..`, control
characters, NUL, quotes or undecodable bytes (surrogate escapes from /proc). They
become directory and file names, so `encode_name` maps every `str` to a name that:

- is never empty, never `.` or `..`, never starts with `.` or `-`;
- holds only printable ASCII from `[A-Za-z0-9_.%~=-]` (no `/`, no `:` that would
  break an rrdtool DEF, no blank that would break the rrdcached protocol);
- is at most `MAX_LENGTH` characters;
- differs for different names (the code is injective), and `decode_name` gives the
  name back whenever the full encoding fits.

Encoding, one token per code point (a prefix-free code, hence injective):
- `A-Z a-z 0-9 _ -` stay as they are, and `.` too unless it comes first; a
  leading `-` or `.` is escaped;
- a surrogate (U+D800-U+DFFF, e.g. an undecodable byte 0xFF read with
  surrogateescape is U+DCFF) becomes `~` + 4 upper-case hex digits (`~DCFF`): it
  has no UTF-8 form, and this keeps `"\\udcc3\\udca9"` apart from `"é"`;
- any other character becomes its UTF-8 bytes as `%XX` (upper-case hex).
The empty name is `%` alone, which no token sequence produces.

A name whose encoding is longer than `MAX_LENGTH` becomes a prefix of whole tokens,
then `=`, then 32 hex digits of the SHA-256 of the full name. A plain encoding never
holds `=` (it is escaped as `%3D`), so a hashed name cannot equal a plain one; its
`decode_name` is the readable prefix followed by `…`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import string

MAX_LENGTH = 100
ELLIPSIS = "…"

_PLAIN = frozenset(string.ascii_letters + string.digits + "_-")
_EMPTY = "%"
_HASH_MARK = "="
_HASH_HEX = 32  # 128 bits of SHA-256: no collision in any real set of names
_PREFIX_BUDGET = MAX_LENGTH - len(_HASH_MARK) - _HASH_HEX
_HASH_RE = re.compile(r"[0-9a-f]{%d}" % _HASH_HEX)
_TOKEN_RE = re.compile(r"(%[0-9A-F]{2})+|~[0-9A-F]{4}|[A-Za-z0-9_.-]")


def _token(ch: str, first: bool) -> str:
    if ch in _PLAIN and not (first and ch == "-"):
        return ch
    if ch == "." and not first:
        return ch
    cp = ord(ch)
    if 0xD800 <= cp <= 0xDFFF:
        return f"~{cp:04X}"
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8"))


def _tokens(name: str) -> list[str]:
    return [_token(ch, i == 0) for i, ch in enumerate(name)]


@functools.lru_cache(maxsize=1 << 16)  # every poll encodes every context's name again
def encode_name(name: str) -> str:
    """Map any context or interface name to a safe, unique file name (see module doc)."""
    tokens = _tokens(name)
    plain = "".join(tokens)
    if not plain:
        return _EMPTY
    if len(plain) <= MAX_LENGTH:
        return plain
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX]
    prefix = []
    used = 0
    for t in tokens:
        if used + len(t) > _PREFIX_BUDGET:
            break
        prefix.append(t)
        used += len(t)
    return "".join(prefix) + _HASH_MARK + digest


def _decode_tokens(text: str) -> str:
    out = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise ValueError(f"not an encoded name: {text!r}")
        tok = m.group(0)
        if tok[0] == "%":
            # A run of %XX: the UTF-8 bytes of one or more characters.
            out.append(bytes.fromhex(tok.replace("%", "")).decode("utf-8"))
        elif tok[0] == "~":
            out.append(chr(int(tok[1:], 16)))
        else:
            out.append(tok)
        pos = m.end()
    return "".join(out)


def decode_name(encoded: str) -> str:
    """The name `encoded` stands for; a hashed long name gives its prefix + `…`.

    Raises ValueError for anything `encode_name` does not produce (a foreign file or
    directory, or a non-canonical spelling such as `%41` for `A`), so that callers
    listing a directory can skip it.
    """
    if encoded == _EMPTY:
        return ""
    prefix, mark, digest = encoded.partition(_HASH_MARK)
    if mark and not _HASH_RE.fullmatch(digest):
        raise ValueError(f"not an encoded name: {encoded!r}")
    try:
        name = _decode_tokens(prefix)
    except UnicodeDecodeError as e:
        raise ValueError(f"not an encoded name: {encoded!r}") from e
    # Canonical spelling only, so that decoding is the exact inverse of encoding.
    if "".join(_tokens(name)) != prefix or (not mark and not prefix):
        raise ValueError(f"not a canonical encoded name: {encoded!r}")
    if mark:
        if len(encoded) > MAX_LENGTH or len(prefix) > _PREFIX_BUDGET:
            raise ValueError(f"not an encoded name: {encoded!r}")
        return name + ELLIPSIS
    if len(encoded) > MAX_LENGTH:
        raise ValueError(f"encoded name too long: {encoded!r}")
    return name


def is_truncated(encoded: str) -> bool:
    """True for the hashed form of a long name (its decode is only a prefix)."""
    return _HASH_MARK in encoded


def clean_text(s: str) -> str:
    """A name fit for JSON, HTTP, labels and the environment: bytes that were not
    UTF-8 (kept as surrogates by the sources) and NULs become U+FFFD."""
    if s.isascii() and "\0" not in s:
        return s
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\0", "\ufffd")


def loggable(s: str) -> str:
    """A name on one log line: as is when printable, else JSON-quoted (no forged
    lines, no terminal escapes)."""
    return s if s.isprintable() and s.strip() == s and s else json.dumps(s)
