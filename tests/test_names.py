"""exporters.names: safe, injective, reversible file names for untrusted names."""

from __future__ import annotations

import itertools
import os
import random
import re

import pytest

from exporters.names import ELLIPSIS, MAX_LENGTH, decode_name, encode_name, is_truncated

HOSTILE = [
    "",
    ".",
    "..",
    "...",
    "/",
    "//",
    "../../etc/passwd",
    "a/../../b",
    "./x",
    ".hidden",
    "-rf",
    "--daemon",
    "name with spaces",
    "tab\there",
    "new\nline",
    "nul\x00byte",
    "\x00",
    "\x7f",
    "\x1b[31mred",
    "quote'single",
    'quote"double',
    "back\\slash",
    "<script>alert(1)</script>",
    "&amp;",
    "colon:DEF:x",
    "percent%41",
    "%",
    "%25",
    "~DCFF",
    "tilde~",
    "equals=sign",
    "a=" + "0" * 32,
    "é",
    "日本語",
    "emoji😀",
    "\u200b",  # zero width space
    "\ufeff",
    os.fsdecode(b"bad\xffbyte"),
    os.fsdecode(b"\xc3"),
    os.fsdecode(b"\xed\xa0\x80"),  # a UTF-16 surrogate spelled in UTF-8: invalid
    "\udcc3\udca9",  # the surrogate escapes of the bytes of "é", yet not "é"
    "\ud800",  # a lone surrogate that surrogateescape never makes
    "x" * 100,
    "x" * 101,
    "é" * 40,
    "a" * 10_000,
    "/" * 10_000,
    "web01",
    "WEB01",
    "Web01",
]

SAFE_RE = re.compile(r"[A-Za-z0-9_.%~=-]+")


def assert_safe(encoded: str) -> None:
    assert encoded, "empty file name"
    assert len(encoded) <= MAX_LENGTH
    assert SAFE_RE.fullmatch(encoded), encoded
    assert "/" not in encoded and "\x00" not in encoded
    assert encoded not in (".", "..")
    assert not encoded.startswith(".") and not encoded.startswith("-")
    assert all(0x21 <= ord(ch) <= 0x7E for ch in encoded)


@pytest.mark.parametrize("name", HOSTILE, ids=lambda n: repr(n[:20]))
def test_hostile_names_are_safe_and_round_trip(name):
    encoded = encode_name(name)
    assert_safe(encoded)
    assert encode_name(name) == encoded  # deterministic
    if is_truncated(encoded):
        decoded = decode_name(encoded)
        assert decoded.endswith(ELLIPSIS)
        assert name.startswith(decoded[: -len(ELLIPSIS)])
    else:
        assert decode_name(encoded) == name


def test_hostile_names_do_not_collide():
    encodings = [encode_name(n) for n in HOSTILE]
    assert len(set(encodings)) == len(HOSTILE)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("web01", "web01"),
        ("a-b_c.d", "a-b_c.d"),
        ("", "%"),
        (".", "%2E"),
        ("..", "%2E."),
        ("../x", "%2E.%2Fx"),
        ("-x", "%2Dx"),
        ("a b", "a%20b"),
        ("é", "%C3%A9"),
        ("\x00", "%00"),
        ("a=b", "a%3Db"),
        (os.fsdecode(b"\xff"), "~DCFF"),
    ],
)
def test_known_encodings(name, expected):
    assert encode_name(name) == expected


def test_surrogate_escapes_stay_apart_from_the_characters_their_bytes_spell():
    # The same bytes on disk, but different str: must not share a file.
    assert encode_name("\udcc3\udca9") != encode_name("é")
    assert decode_name(encode_name("\udcc3\udca9")) == "\udcc3\udca9"


def _generated_names() -> list[str]:
    alphabet = ["a", "A", ".", "-", "_", "%", "~", "=", "/", "\x00", " ", "é", "\udcff", "\udcc3", "\ud800", "0"]
    names = ["".join(p) for n in range(5) for p in itertools.product(alphabet, repeat=n)]
    rng = random.Random(1234)
    pool = alphabet + ["\n", "\t", '"', "'", "<", ">", "日", "😀", "\x7f", "\udca9", "F", "2E"]
    for _ in range(20_000):
        names.append("".join(rng.choice(pool) for _ in range(rng.randint(0, 30))))
    # long names that differ only in one late character, or only after the cut
    base = "".join(rng.choice(pool) for _ in range(150))
    for i, ch in itertools.product(range(60, 150, 7), ["a", "é", "\udcff", "."]):
        names.append(base[:i] + ch + base[i + 1 :])
    for n in range(95, 110):
        names.append("b" * n)
    return names


def test_injective_safe_and_reversible_over_a_large_generated_set():
    names = set(_generated_names())
    seen: dict[str, str] = {}
    for name in names:
        encoded = encode_name(name)
        assert_safe(encoded)
        assert encoded not in seen, f"{name!r} and {seen[encoded]!r} both encode to {encoded}"
        seen[encoded] = name
        if not is_truncated(encoded):
            assert decode_name(encoded) == name
    assert len(seen) == len(names) > 80_000


def test_long_names_are_hashed_with_a_readable_prefix():
    name = "container-" + "x" * 500
    encoded = encode_name(name)
    assert len(encoded) <= MAX_LENGTH
    assert is_truncated(encoded)
    assert encoded.startswith("container-xxx")
    decoded = decode_name(encoded)
    assert decoded.endswith(ELLIPSIS) and name.startswith(decoded[:-1])
    # differs only in the last character: a different file
    assert encode_name(name[:-1] + "y") != encoded


def test_longest_name_that_fits_is_not_hashed():
    assert encode_name("z" * MAX_LENGTH) == "z" * MAX_LENGTH
    assert is_truncated(encode_name("z" * (MAX_LENGTH + 1)))
    # a multi-byte character is never cut in the middle of its escape
    encoded = encode_name("é" * 60)
    prefix = encoded.split("=")[0]
    assert decode_name(encoded) == "é" * (len(prefix) // 6) + ELLIPSIS


@pytest.mark.parametrize(
    "foreign",
    ["a/b", ".x", "..", "-x", "%41", "%c3%a9", "%C3", "%2", "~12", "~dcff", "a b", "x=zz", "=" * 3, "%25%", "x" * 101, ""],
)
def test_decode_rejects_what_encode_cannot_produce(foreign):
    with pytest.raises(ValueError):
        decode_name(foreign)
