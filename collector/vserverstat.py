"""util-vserver's `vserver-stat` table, byte for byte.

Mirrors `src/vserver-stat.c` (showContexts, shortenMem, shortenTime, formatName):
each row is a blank-filled buffer that fields are copied into at fixed columns,
nothing guarding overlaps, and values wrap like the C unsigned types do.
"""

from __future__ import annotations

from .snapshot import ContextSample, Snapshot

HEADER = "CTX   PROC    VSZ    RSS  userTIME   sysTIME    UPTIME NAME"

_U64 = (1 << 64) - 1
_MEM_SUFFIXES = (" ", "K", "M", "G", "T", "+")
_NAME_COLUMN = 55
_NAME_MAX = 20


def shorten_mem(value: int) -> str:
    """Bytes as vserver-stat prints them: 7 columns or fewer, e.g. `32M`, `152.1M`.

    The unit changes at 1000 (1000..1023 MiB is `0.9G`), the tenth is the truncated
    remainder of the last division only, and `.0` is never printed.
    """
    val = value & _U64  # an unsigned long in C
    suffix = "+"
    tenth = 0
    for s in _MEM_SUFFIXES:
        if val < 1000:
            suffix = s
            break
        tenth = 10 * (val & 1023) // 1024
        val >>= 10
    if val > 9999:
        val = 9999
    if val >= 1000:
        tenth = 0
    text = str(val)
    if tenth:
        text += f".{tenth}"
    return text + suffix


def _fill_zero(val: int, width: int) -> str:
    # fillUintZero: zero-pad to `width`, and cut longer numbers to `width` characters.
    return str(val).rjust(width, "0")[:width]


def shorten_time(ms: int) -> str:
    """Milliseconds as vserver-stat prints them (`232d11h34`, `1h54m19`, `11m59s89`).

    Below an hour the last field is the ms value cut or zero-padded to two
    characters: 890 ms -> `89`, 5 ms -> `05`, 50 ms -> `50`.
    """
    t = ms & _U64  # uint64_t in C: a negative span shows as INVALID
    msec = t % 1000
    t //= 1000
    ss = t % 60
    t //= 60
    mm = t % 60
    t //= 60
    hh = t % 24
    days = t // 24
    if days > 999 * 999:
        return "INVALID"
    if days > 999:
        return f"{days // 365}y{_fill_zero(days % 365, 2)}d{_fill_zero(hh, 2)}"
    if days > 0:
        return f"{days}d{_fill_zero(hh, 2)}h{_fill_zero(mm, 2)}"
    if hh > 0:
        return f"{hh}h{_fill_zero(mm, 2)}m{_fill_zero(ss, 2)}"
    return f"{mm}m{_fill_zero(ss, 2)}s{_fill_zero(msec, 2)}"


def _put(buf: list[str], at: int, text: str) -> None:
    at = max(at, 0)
    if at + len(text) > len(buf):
        buf.extend(" " * (at + len(text) - len(buf)))
    buf[at : at + len(text)] = text


def format_row(
    ctx: int | str,
    proc: int,
    vsz: int,
    rss: int,
    user_ms: int,
    sys_ms: int,
    uptime_ms: int,
    name: str,
) -> str:
    """One table line (no newline). `vsz` and `rss` in bytes, times in ms."""
    buf = [" "] * _NAME_COLUMN
    _put(buf, 0, str(ctx))
    p = str(proc)
    _put(buf, 10 - len(p), p)
    for col, width, text in (
        (10, 7, shorten_mem(vsz)),
        (17, 7, shorten_mem(rss)),
        (24, 10, shorten_time(user_ms)),
        (34, 10, shorten_time(sys_ms)),
        (44, 10, shorten_time(uptime_ms)),
    ):
        _put(buf, col + width - len(text), text)
    # The name is copied at column 55 and the line ends after it.
    return "".join(buf[:_NAME_COLUMN]) + name[:_NAME_MAX]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _uptime_ms(ctx: ContextSample, host_uptime: float) -> int:
    if ctx.first_process_start is not None:
        # vserver-stat reads /proc/uptime without its fraction (§8.2 of the reference)
        # and subtracts its oldest process's start.
        return int(host_uptime) * 1000 - _ms(ctx.first_process_start)
    if ctx.uptime_seconds is not None:
        # Rounded: the float comes from centisecond figures (BiasUptime, /proc/uptime).
        return _ms(ctx.uptime_seconds)
    return 0


def terminal_text(name: str) -> str:
    """A name as the table may print it: printable text as is, control characters
    (escape sequences, newlines) and undecodable bytes as `\\xNN` / `\\uNNNN`."""
    if name.isprintable():
        return name
    out = []
    for ch in name:
        o = ord(ch)
        if ch.isprintable():
            out.append(ch)
        elif 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        else:
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
    return "".join(out)


def _order(ctx: ContextSample) -> tuple:
    numeric = ctx.ctx_id.isdigit()
    return (not numeric, int(ctx.ctx_id) if numeric else 0, ctx.name)


def format_table(snapshot: Snapshot) -> str:
    """The whole table, header first, every line ending in a newline."""
    lines = [HEADER]
    for c in sorted(snapshot.contexts, key=_order):
        lines.append(
            format_row(
                c.ctx_id,
                c.processes,
                c.vsz_bytes,
                c.rss_bytes,
                _ms(c.live_user_seconds),
                _ms(c.live_system_seconds),
                _uptime_ms(c, snapshot.host_uptime_seconds),
                terminal_text(c.name),
            )
        )
    return "\n".join(lines) + "\n"
