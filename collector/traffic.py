"""Per-context traffic, received and sent, also for contexts that share the host's network.

`[traffic] accounting = "nftables"` makes ctxmon own one nftables table, `inet ctxmon`,
and nothing else in the ruleset. Three methods, one figure per context:

- `cgroup`: cgroup contexts in the host's network namespace, by the cgroup of the
  local socket (`socket cgroupv2 level N`), on the input and output hooks;
- `address`: VServer guests, by their addresses (`interfaces/*/ip` of the guest's
  config dir): source address on output, destination address on input;
- `netns`: contexts with their own network namespace: the sum over their own
  interfaces except `lo` (their packets never pass the host namespace's hooks as theirs).

Per-packet cost does not grow with the number of contexts: each hook has one rule per
cgroup depth in use and one per address family, each a map lookup (cgroup id or
address -> named counter). The table is built in one `nft -f` transaction at start
(replacing a leftover from a crash), changed in one transaction when the set of
contexts changes (named counters of contexts that stay are kept, so they count on
without a gap), read once per poll with `nft list counters`, deleted at exit.

nft resolves a `socket cgroupv2` element by stat()ing its string under
/sys/fs/cgroup, taking the inode number, which is the cgroup's id; the kernel then
compares ids. So a cgroup2 hierarchy mounted elsewhere (hybrid hosts: at
/sys/fs/cgroup/unified) is named by its path relative to /sys/fs/cgroup. A path nft's
scanner cannot quote safely (a `"`, control or non-ASCII characters: cgroup names are
untrusted) is named through /proc/self/fd/N of an fd opened here and passed to nft,
so no untrusted string ever reaches nft's input.

Pure functions (rule text, counter JSON, guest addresses) first; I/O in `NftTable`
and `TrafficAccounting`.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import itertools
import logging
import os
import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from .snapshot import ContextSample, InterfaceSample, TrafficSample

log = logging.getLogger(__name__)

FAMILY = "inet"
TABLE = "ctxmon"
ACCOUNTING_CHOICES = ("off", "nftables")
METHODS = ("cgroup", "address", "netns")

# Where nft (compiled in) resolves `socket cgroupv2` paths.
NFT_CGROUP_BASE = "/sys/fs/cgroup"
# Input: early (mangle), so what arrived for a socket or address counts even when a
# later filter drops it; output: late (after filter), so only what left counts.
INPUT_PRIORITY = -150
OUTPUT_PRIORITY = 300
NFT_TIMEOUT_SECONDS = 30.0
# Guest addresses change only when a guest is reconfigured and restarted: re-read
# this often (and whenever a guest appears).
GUEST_ADDRESS_TTL_SECONDS = 60.0
# How long the totals of a departed context are kept (as the sampler keeps CPU
# counters), so a context back within that time counts on from where it was.
DEPARTED_STATE_SECONDS = 3600.0
# Upper bounds on untrusted input: bytes of one `ip` file, interfaces per guest,
# cgroup paths named through a passed fd per transaction.
MAX_IP_FILE_BYTES = 256
MAX_GUEST_INTERFACES = 64
MAX_FD_REFS = 512
MAX_CACHED_PATHS = 100_000

# What nft's scanner takes verbatim inside "...": printable ASCII but the quote.
_SAFE_REF = re.compile(r'[ !#-~]+')


# --------------------------------------------------------------------------- pure


@dataclass(frozen=True, slots=True)
class CgroupMatch:
    """A cgroup context as the kernel matches it: its depth and its id (inode)."""

    level: int
    cgroup_id: int
    path: str  # the host path of the cgroup dir (not part of equality's meaning)


@dataclass(frozen=True, slots=True)
class AddressMatch:
    """A VServer guest's addresses (normalised text, IPv4 and IPv6)."""

    addresses: tuple[str, ...]


Match = CgroupMatch | AddressMatch


def parse_guest_ip(text: str) -> str | None:
    """util-vserver's `interfaces/<n>/ip`: one address, a `/prefix` ignored.

    Returns the normalised address, or None when the file holds no valid one."""
    first = text.strip().split("\n", 1)[0].strip()
    addr = first.split("/", 1)[0].strip()
    if not addr or len(addr) > 64:
        return None
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if ip.is_unspecified:
        return None  # 0.0.0.0 would match every unbound reply: never a guest's own
    return str(ip)


def nft_ref(cgroup_dir: str, base: str = NFT_CGROUP_BASE) -> str | None:
    """The string nft resolves under `base` to `cgroup_dir`; None if unsafe to quote."""
    ref = os.path.relpath(cgroup_dir, base)
    return ref if _SAFE_REF.fullmatch(ref) else None


def fd_ref(fd: int) -> str:
    """A path under /sys/fs/cgroup that resolves to the directory open as `fd` in nft."""
    return f"../../../proc/self/fd/{fd}"


@functools.lru_cache(maxsize=1 << 16)  # read once a poll for every context
def counter_names(slot: int) -> tuple[str, str]:
    """(received, sent) counter object names of a slot."""
    return f"rx{slot}", f"tx{slot}"


@dataclass(frozen=True, slots=True)
class TableLayout:
    """What the table holds: counter slots, and the map elements pointing at them.

    `cgroup`: (level, nft string, slot); `address`: (address text, slot)."""

    slots: frozenset[int] = frozenset()
    cgroup: tuple[tuple[int, str, int], ...] = ()
    address: tuple[tuple[str, int], ...] = ()

    def levels(self) -> tuple[int, ...]:
        return tuple(sorted({lvl for lvl, _, _ in self.cgroup}))

    def maps(self) -> tuple[str, ...]:
        names = [f"cg{d}{lvl}" for lvl in self.levels() for d in ("i", "o")]
        return tuple(names) + ("a4i", "a4o", "a6i", "a6o")


def _q(s: str) -> str:
    if not _SAFE_REF.fullmatch(s):
        raise ValueError(f"not safe in nft input: {s!r}")
    return f'"{s}"'


def build_transaction(old: TableLayout | None, new: TableLayout) -> str:
    """The `nft -f` text taking the table from `old` to `new` in one transaction.

    `old` None: create afresh, replacing any table of that name (a leftover from a
    crash). Otherwise the chains and maps are flushed and refilled, counters of
    departed slots deleted and new ones added; counters of slots in both stay and keep
    counting. Only our own table is named, always with family and name.
    """
    t = f"{FAMILY} {TABLE}"
    out: list[str] = []
    old_maps: tuple[str, ...] = ()
    old_slots: frozenset[int] = frozenset()
    if old is None:
        out += [f"add table {t}", f"delete table {t}", f"add table {t}",
                f"add chain {t} input {{ type filter hook input priority {INPUT_PRIORITY};"
                " policy accept; }",
                f"add chain {t} output {{ type filter hook output priority {OUTPUT_PRIORITY};"
                " policy accept; }"]
    else:
        old_maps, old_slots = old.maps(), old.slots
        out += [f"flush chain {t} input", f"flush chain {t} output"]
    new_maps = new.maps()
    for m in old_maps:
        out.append(f"flush map {t} {m}")
    for m in old_maps:
        if m not in new_maps:
            out.append(f"delete map {t} {m}")
    for slot in sorted(old_slots - new.slots):
        for name in counter_names(slot):
            out.append(f"delete counter {t} {name}")
    for slot in sorted(new.slots - old_slots):
        for name in counter_names(slot):
            out.append(f"add counter {t} {name}")
    for m in new_maps:
        if m not in old_maps:
            key = "cgroupsv2" if m.startswith("cg") else (
                "ipv4_addr" if m.startswith("a4") else "ipv6_addr")
            out.append(f"add map {t} {m} {{ type {key} : counter; }}")
    for lvl in new.levels():
        for d, idx in (("i", 0), ("o", 1)):
            elems = [f"{_q(ref)} : {_q(counter_names(slot)[idx])}"
                     for level, ref, slot in new.cgroup if level == lvl]
            out.append(f"add element {t} cg{d}{lvl} {{ {', '.join(elems)} }}")
    for fam in ("4", "6"):
        mine = [(a, s) for a, s in new.address if (":" in a) == (fam == "6")]
        if mine:
            for d, idx in (("i", 0), ("o", 1)):
                elems = [f"{a} : {_q(counter_names(s)[idx])}" for a, s in mine]
                out.append(f"add element {t} a{fam}{d} {{ {', '.join(elems)} }}")
    for lvl in new.levels():
        out.append(f"add rule {t} input counter name socket cgroupv2 level {lvl} map @cgi{lvl}")
        out.append(f"add rule {t} output counter name socket cgroupv2 level {lvl} map @cgo{lvl}")
    out += [f"add rule {t} input counter name ip daddr map @a4i",
            f"add rule {t} input counter name ip6 daddr map @a6i",
            f"add rule {t} output counter name ip saddr map @a4o",
            f"add rule {t} output counter name ip6 saddr map @a6o"]
    return "\n".join(out) + "\n"


_TABLE_HEADER = f"table {FAMILY} {TABLE} {{\n"
_OUR_COUNTER = re.compile(r"[rt]x\d+")
_TEXT_COUNTER = re.compile(r"^\tcounter (\S+) \{\n\t\tpackets (\d+) bytes (\d+)\n\t\}$", re.M)


def parse_counters(text: str) -> dict[str, tuple[int, int]]:
    """`nft list counters table inet ctxmon` -> {counter name: (packets, bytes)}.

    nft's text listing, not its JSON: printing JSON takes libnftables longer than the
    kernel takes to hand over the counters (16 against 6 ms for 2,000 counters).
    Only our table's section is read, only counters of our own naming are taken; a
    counter in it this parser does not understand raises ValueError (nft's format
    changed), as does output that names other tables but not ours."""
    if not text.strip():
        return {}  # nft lists nothing for a table without counters
    start = text.find(_TABLE_HEADER)
    if start < 0 or (start and text[start - 1] != "\n"):
        raise ValueError(f"no table {FAMILY} {TABLE} in nft's output")
    start += len(_TABLE_HEADER)
    end = text.find("\n}\n", start - 1)
    if end < 0:
        raise ValueError("nft's listing ends inside the table")
    section = text[start:end + 1]
    found = _TEXT_COUNTER.findall(section)
    if len(found) != section.count("\tcounter "):
        raise ValueError("nft listed a counter in a form not understood")
    return {name: (int(packets), int(nbytes)) for name, packets, nbytes in found
            if _OUR_COUNTER.fullmatch(name)}


def netns_totals(interfaces: Iterable[InterfaceSample]) -> tuple[int, int, int, int]:
    """(rx bytes, rx packets, tx bytes, tx packets) over a namespace's interfaces but lo."""
    rb = rp = tb = tp = 0
    for i in interfaces:
        if i.name == "lo":
            continue
        rb += i.rx_bytes
        rp += i.rx_packets
        tb += i.tx_bytes
        tp += i.tx_packets
    return rb, rp, tb, tp


def cgroup2_dir(cgroup_root: str) -> str | None:
    """The cgroup2 hierarchy under `cgroup_root`: itself (unified) or `unified` (hybrid)."""
    for d in (cgroup_root, os.path.join(cgroup_root, "unified")):
        if os.path.isfile(os.path.join(d, "cgroup.controllers")):
            return d
    return None


# --------------------------------------------------------------------------- totals


class TrafficTotals:
    """Keeps each context's four counters from ever going down.

    A value comes with a generation (the counter it was read from). When the
    generation changes (the context's counters were recreated: the table was rebuilt,
    the context left and came back) or a value drops (a namespace recreated), the last
    value is added to an offset, as for CPU."""

    def __init__(self) -> None:
        # key -> [generation, last (4), offset (4), last seen]
        self._st: dict[str, list] = {}

    def observe(self, key: str, generation: object, raw: tuple[int, int, int, int] | None,
                now: float) -> tuple[int, int, int, int]:
        st = self._st.get(key)
        if st is None:
            st = self._st[key] = [generation, (0, 0, 0, 0), (0, 0, 0, 0), now]
        st[3] = now
        last, off = st[1], st[2]
        if raw is None:  # not read this poll: hold
            raw = last
        # A new counter, or any figure lower (a namespace recreated): all restarted.
        elif (generation != st[0] or raw[0] < last[0] or raw[1] < last[1]
              or raw[2] < last[2] or raw[3] < last[3]):
            off = st[2] = (off[0] + last[0], off[1] + last[1], off[2] + last[2],
                           off[3] + last[3])
            st[0] = generation
        st[1] = raw
        return (off[0] + raw[0], off[1] + raw[1], off[2] + raw[2], off[3] + raw[3])

    def expire(self, now: float) -> None:
        for key in [k for k, st in self._st.items() if now - st[3] > DEPARTED_STATE_SECONDS]:
            del self._st[key]


# --------------------------------------------------------------------------- nft I/O


class NftError(Exception):
    """nft failed; the message is nft's first error line."""


def _first_error(stderr: str) -> str:
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith("Error:") or "Error:" in line:
            return line[line.index("Error:"):][:300]
    return (stderr.strip().splitlines() or ["nft failed"])[0][:300]


def run_nft(args: Sequence[str], stdin: str | None = None,
            pass_fds: Sequence[int] = ()) -> str:
    """Run nft; its stdout, or NftError. FileNotFoundError when nft is not installed."""
    exe = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
    if exe is None:
        raise FileNotFoundError(errno.ENOENT, "nft not found")
    try:
        p = subprocess.run([exe, *args], input=stdin, capture_output=True, text=True,
                           errors="replace", pass_fds=tuple(pass_fds),
                           timeout=NFT_TIMEOUT_SECONDS, env={"PATH": "/usr/sbin:/usr/bin"})
    except subprocess.TimeoutExpired:
        raise NftError(f"nft did not answer within {NFT_TIMEOUT_SECONDS:g}s") from None
    if p.returncode != 0:
        raise NftError(_first_error(p.stderr))
    return p.stdout


class LibNft:
    """libnftables in this process (ctypes): the same commands as the `nft` executable
    without a fork and exec per call, which is most of a counter read's cost.

    Called like `run_nft`: `(["-f", "-"], text)` runs a transaction,
    `(["-j", "list", ...])` a command with JSON output. fds named as /proc/self/fd/N
    are this process's own, so `pass_fds` needs nothing done."""

    # include/nftables/libnftables.h (stable ABI, libnftables.so.1)
    _OUTPUT_JSON = 1 << 4

    def __init__(self, soname: str = "libnftables.so.1"):
        import ctypes

        lib = ctypes.CDLL(soname, use_errno=True)  # OSError when not installed
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        for f in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, f).argtypes = [ctypes.c_void_p]
            getattr(lib, f).restype = ctypes.c_int
        for f in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, f).argtypes = [ctypes.c_void_p]
            getattr(lib, f).restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not ctx:
            raise OSError("nft_ctx_new failed")
        if lib.nft_ctx_buffer_output(ctx) or lib.nft_ctx_buffer_error(ctx):
            lib.nft_ctx_free(ctx)
            raise OSError("libnftables: cannot buffer output")
        self._lib, self._ctx = lib, ctx
        self._flags = lib.nft_ctx_output_get_flags(ctx)

    def __call__(self, args: Sequence[str], stdin: str | None = None,
                 pass_fds: Sequence[int] = ()) -> str:
        args = list(args)
        as_json = bool(args) and args[0] == "-j"
        if as_json:
            args = args[1:]
        cmd = stdin if args == ["-f", "-"] else " ".join(args)
        if cmd is None:
            raise ValueError("no command")
        lib, ctx = self._lib, self._ctx
        if not ctx:
            raise NftError("libnftables context closed")
        lib.nft_ctx_output_set_flags(ctx, self._flags | (self._OUTPUT_JSON if as_json else 0))
        rc = lib.nft_run_cmd_from_buffer(ctx, cmd.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode("utf-8", "replace")
        err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode("utf-8", "replace")
        if rc != 0:
            raise NftError(_first_error(err) if err.strip() else "nft command failed")
        return out

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None


def default_runner() -> Callable[..., str]:
    """libnftables in-process where it loads, else the `nft` executable."""
    try:
        return LibNft()
    except (OSError, AttributeError):
        return run_nft


_EPOCHS = itertools.count(1)


@dataclass
class _Slots:
    """Counter slots by context key; a slot's number is never reused while we run."""

    by_key: dict[str, int] = field(default_factory=dict)
    next: int = 0

    def get(self, key: str) -> int:
        slot = self.by_key.get(key)
        if slot is None:
            slot = self.by_key[key] = self.next
            self.next += 1
        return slot


class NftTable:
    """The `inet ctxmon` table: create, change, read, delete. Never another table.

    `run` is `run_nft`'s signature (tests and benchmarks may wrap it)."""

    def __init__(self, run: Callable[..., str] | None = None):
        self.run = run or default_runner()
        self.layout: TableLayout | None = None  # None: no table of ours
        self.plan: dict[str, Match] = {}
        self.slots = _Slots()
        # A new one whenever the table is created anew (its counters restart), unique
        # in this process so totals handed from one NftTable to the next stay right.
        self.epoch = 0
        self.cgroup_ok = True
        self.cgroup_error = ""

    @property
    def active(self) -> bool:
        return self.layout is not None

    # -- start / stop

    def start(self) -> None:
        """Create an empty table (replacing a leftover), probing `socket cgroupv2`.

        Raises FileNotFoundError (no nft) or NftError (no table could be made: no
        CAP_NET_ADMIN, no nf_tables); a kernel without the cgroupv2 match only turns
        `cgroup_ok` off. A failed transaction changes nothing, so no half-built table."""
        fresh = build_transaction(None, TableLayout())
        probe = (f"add map {FAMILY} {TABLE} cgi1 {{ type cgroupsv2 : counter; }}\n"
                 f"add rule {FAMILY} {TABLE} input counter name socket cgroupv2 level 1"
                 " map @cgi1\n")
        try:
            self.run(["-f", "-"], fresh + probe)
        except NftError as e:
            self.cgroup_ok = False
            self.cgroup_error = str(e)
        else:
            self.cgroup_ok = True
        try:
            self.run(["-f", "-"], fresh)  # the probe goes with the table it was in
        except (NftError, OSError):
            if self.cgroup_ok:  # the probe's table was made: never leave it half-built
                self.layout = TableLayout()
                self.close()
            raise
        self.layout = TableLayout()  # made (a failed transaction made nothing to delete)
        self.epoch = next(_EPOCHS)

    def close(self) -> None:
        """Delete the table; quiet when it is gone already."""
        if self.layout is None:
            return
        self.layout = None
        self.plan = {}
        try:
            self.run(["-f", "-"], f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n")
        except (OSError, NftError) as e:
            log.error("traffic: could not delete table %s %s: %s", FAMILY, TABLE, e)

    # -- change

    def apply(self, plan: Mapping[str, Match]) -> bool:
        """Bring the table to `plan` (context key -> match) if it differs; one transaction.

        Returns True if a transaction ran. Raises NftError (the table is as before)."""
        if self.layout is None:
            raise NftError("no table")
        if dict(plan) == self.plan:
            return False
        fds: list[int] = []
        try:
            layout = self._layout(plan, fds)
            self.run(["-f", "-"], build_transaction(self.layout, layout), pass_fds=fds)
        finally:
            for fd in fds:
                os.close(fd)
        self.layout = layout
        self.plan = dict(plan)
        for key in [k for k in self.slots.by_key if k not in plan]:
            del self.slots.by_key[key]
        return True

    def _layout(self, plan: Mapping[str, Match], fds: list[int]) -> TableLayout:
        slots = set()
        cg: list[tuple[int, str, int]] = []
        addr: list[tuple[str, int]] = []
        seen_addr: dict[str, str] = {}
        for key, m in plan.items():
            slot = self.slots.get(key)
            if isinstance(m, CgroupMatch):
                ref = nft_ref(m.path)
                if ref is None:
                    if len(fds) >= MAX_FD_REFS:
                        continue
                    try:
                        fd = os.open(m.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                    except OSError:
                        continue  # gone: the next poll drops it
                    fds.append(fd)
                    ref = fd_ref(fd)
                cg.append((m.level, ref, slot))
            else:
                for a in m.addresses:
                    if a in seen_addr:
                        continue  # an address two guests claim counts to the first
                    seen_addr[a] = key
                    addr.append((a, slot))
            slots.add(slot)
        return TableLayout(frozenset(slots), tuple(cg), tuple(addr))

    # -- read

    def read(self) -> dict[str, tuple[int, int, int, int]]:
        """{context key: (rx bytes, rx packets, tx bytes, tx packets)} of the plan's keys."""
        counters = parse_counters(self.run(["list", "counters", "table", FAMILY, TABLE]))
        out = {}
        for key, slot in self.slots.by_key.items():
            rx, tx = counter_names(slot)
            r, t = counters.get(rx), counters.get(tx)
            if r is None or t is None:
                continue
            out[key] = (r[1], r[0], t[1], t[0])
        return out

    def generation(self, key: str) -> object:
        return (self.epoch, self.slots.by_key.get(key))



# --------------------------------------------------------------------------- per poll


def read_guest_addresses(config_dir: str) -> tuple[str, ...]:
    """The addresses in `<config_dir>/interfaces/*/ip`, sorted; unreadable ones skipped."""
    base = os.path.join(config_dir, "interfaces")
    try:
        names = sorted(os.listdir(base))[:MAX_GUEST_INTERFACES]
    except OSError:
        return ()
    found = set()
    for n in names:
        try:
            fd = os.open(os.path.join(base, n, "ip"), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue  # a fifo or device planted there must not block or mislead
            data = os.read(fd, MAX_IP_FILE_BYTES + 1)
        except OSError:
            continue
        finally:
            os.close(fd)
        if len(data) > MAX_IP_FILE_BYTES:
            continue
        addr = parse_guest_ip(data.decode("ascii", "replace"))
        if addr is not None:
            found.add(addr)
    return tuple(sorted(found))


class TrafficAccounting:
    """Per poll: how each context is counted, the table kept in step, and totals that
    never decrease. `start()` once, `sample()` every poll, `close()` at exit."""

    def __init__(self, cgroup_root: str = "/sys/fs/cgroup", table: NftTable | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.table = table or NftTable()
        self.cgroup_root = cgroup_root
        self.cgroup_dir = cgroup2_dir(cgroup_root)
        self.clock = clock
        self.totals = TrafficTotals()
        self._guests: dict[int, tuple[str | None, tuple[str, ...], float]] = {}
        self._said: set[str] = set()
        self.started = False
        self._cgroup_dev: int | None = None
        self._cg_paths: dict[str, str] = {}  # checked cgroup path -> host path

    def _once(self, what: str, message: str, *args) -> None:
        if what not in self._said:
            self._said.add(what)
            log.warning(message, *args)

    def start(self) -> None:
        """Create the table. Where that cannot work, say so once and go on: contexts
        with their own network namespace are still counted."""
        self.started = True
        try:
            self.table.start()
        except FileNotFoundError:
            self._once("nft", "traffic: nft not found (Debian package nftables): only "
                       "contexts with their own network namespace are counted")
        except NftError as e:
            hint = ""
            if "ermission" in str(e) or "not permitted" in str(e):
                hint = (" (needs CAP_NET_ADMIN, which [daemon] user gives up)"
                        if os.geteuid() != 0 else " (needs CAP_NET_ADMIN)")
            self._once("nft", "traffic: cannot create table %s %s%s: %s; only contexts "
                       "with their own network namespace are counted", FAMILY, TABLE, hint, e)
            self.table.close()
        else:
            log.info("traffic: accounting in nftables table %s %s", FAMILY, TABLE)
            if not self.table.cgroup_ok:
                self._once("cgroupv2", "traffic: this kernel or nft has no `socket cgroupv2` "
                           "match (%s): cgroup contexts are not counted",
                           self.table.cgroup_error)

    def close(self) -> None:
        """Delete the table and let libnftables go; this object counts no more."""
        self.table.close()
        release = getattr(self.table.run, "close", None)
        if release is not None:
            release()

    def sample(self, contexts: Sequence[ContextSample], now: float, errors,
               guest_dir: Callable[[int], str | None] | None = None,
               ) -> dict[str, TrafficSample]:
        """{context key: TrafficSample} for the contexts that can be counted."""
        if not self.started:
            self.start()
        table = self.table
        raw: dict[str, tuple[int, int, int, int]] = {}
        if table.active:
            try:
                raw = table.read()
            except (NftError, ValueError, OSError) as e:
                errors["traffic"] += 1
                self._once("read", "traffic: reading counters failed: %s", e)
                if "No such file or directory" in str(e):
                    # Someone deleted our table: make it afresh (counters restart:
                    # the new epoch tells the totals to carry the old values).
                    self._restart(errors)
        plan: dict[str, Match] = {}
        out: dict[str, TrafficSample] = {}
        present = set()
        for c in contexts:
            present.add(c.key)
            if c.interfaces:
                totals = self.totals.observe(c.key, "netns", netns_totals(c.interfaces), now)
                out[c.key] = TrafficSample("netns", *totals)
                continue
            m = self._match(c, guest_dir, now) if table.active else None
            if m is None:
                continue
            plan[c.key] = m
            method = "cgroup" if isinstance(m, CgroupMatch) else "address"
            totals = self.totals.observe(c.key, table.generation(c.key), raw.get(c.key), now)
            out[c.key] = TrafficSample(method, *totals)
        for key, values in raw.items():
            if key not in present:  # departing: take its last figures before it goes
                self.totals.observe(key, table.generation(key), values, now)
        if table.active:
            try:
                try:
                    changed = table.apply(plan)
                except NftError:
                    # A cgroup removed since it was looked at makes nft refuse the whole
                    # transaction (it stats each one): once more without the vanished.
                    kept = {k: m for k, m in plan.items()
                            if not isinstance(m, CgroupMatch) or os.path.isdir(m.path)}
                    if len(kept) == len(plan):
                        raise
                    changed = table.apply(kept)
                if changed:
                    log.debug("traffic: table now counts %d contexts", len(table.plan))
            except (NftError, OSError) as e:
                errors["traffic"] += 1
                self._once("apply", "traffic: changing table %s %s failed (it stays as it "
                           "was; retried next poll): %s", FAMILY, TABLE, e)
        self.totals.expire(now)
        for xid in [x for x, hit in self._guests.items() if now - hit[2] > DEPARTED_STATE_SECONDS]:
            del self._guests[xid]
        return out

    def _restart(self, errors) -> None:
        try:
            self.table.layout = None
            self.table.plan = {}
            self.table.start()
        except (OSError, NftError) as e:
            errors["traffic"] += 1
            self._once("restart", "traffic: cannot recreate table %s %s: %s", FAMILY, TABLE, e)
            self.table.close()

    def _match(self, c: ContextSample, guest_dir, now: float) -> Match | None:
        if c.source == "cgroup":
            if not c.cgroup or not self.table.cgroup_ok:
                return None  # the host: what no context accounts for is the rest
            if self.cgroup_dir is None:
                self._once("cgroup2", "traffic: no cgroup2 hierarchy at %s or %s/unified: "
                           "cgroup contexts are not counted", self.cgroup_root, self.cgroup_root)
                return None
            path = self._cg_paths.get(c.cgroup)
            if path is None:
                parts = c.cgroup.split("/")
                if any(p in ("", ".", "..") for p in parts):
                    return None  # no cgroup is called that: a path from a hostile tree
                if len(self._cg_paths) > MAX_CACHED_PATHS:
                    self._cg_paths.clear()
                path = self._cg_paths[c.cgroup] = os.path.join(self.cgroup_dir, c.cgroup)
            try:
                st = os.lstat(path)  # a cgroup fs has no links: one here is planted
                if self._cgroup_dev is None:
                    self._cgroup_dev = os.stat(self.cgroup_dir).st_dev
            except OSError:
                return None  # gone, or only in a v1 hierarchy
            if st.st_dev != self._cgroup_dev or not stat.S_ISDIR(st.st_mode):
                return None  # a link out of the hierarchy: its inode is no cgroup id
            return CgroupMatch(c.cgroup.count("/") + 1, st.st_ino, path)
        if c.xid is not None and c.xid >= 2 and guest_dir is not None:
            hit = self._guests.get(c.xid)
            if hit is None or now - hit[2] >= GUEST_ADDRESS_TTL_SECONDS:
                d = guest_dir(c.xid)
                hit = (d, read_guest_addresses(d) if d else (), now)
                self._guests[c.xid] = hit
            return AddressMatch(hit[1]) if hit[1] else None
        return None
