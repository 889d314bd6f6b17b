"""Where RRD files live: the one place that knows their paths and names.

The writer (`exporters.rrd`) and the readers (`graphs`, `ctxmon`) both go through
here; nobody else builds or parses a path of the layout. Under the sink's directory
(names made safe by `exporters.names.encode_name`, read back with `decode_name`):

    ctx/<context>/<kind>.rrd      one per context and context-scope kind of the
                                  catalog (cpu, mem, tasks, ...)
    ctx/<context>/net-<if>.rrd    kind `net`: an interface of the context's own netns
    host/if-<dev>.rrd             kind `host-if`: a host interface
    host/capacity.json            the host's CPUs and memory (`capacity_path`)
    archive/<context>-<YYYYmmddHHMMSS>/          departed contexts
    archive/host/if-<dev>-<YYYYmmddHHMMSS>.rrd   departed host interfaces

Which kinds exist, and their data sources, is the metric catalog's
(`collector.catalog.FILE_KINDS`): a new context-scope kind gets `<kind>.rrd` here
without a change to this module.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from collector.catalog import FILE_KIND, FILE_KINDS

from .names import decode_name, encode_name

CTX_DIR = "ctx"
HOST_DIR = "host"
ARCHIVE_DIR = "archive"
SUFFIX = ".rrd"

CONTEXT_KINDS = tuple(k.name for k in FILE_KINDS if k.scope == "context")
# The file-name prefix of each interface kind (context's own netns, the host's).
_INTERFACE_PREFIX = {"net": "net-", "host-if": "if-"}
assert {k.name for k in FILE_KINDS if k.scope != "context"} == set(_INTERFACE_PREFIX), \
    "a new interface-scope kind of the catalog needs its prefix here"


class RrdFile(NamedTuple):
    """An RRD file found in the layout, with the names to label it by."""

    path: str
    kind: str
    context: str | None  # decoded; ends with "…" when the name was too long to keep
    interface: str | None
    slug: str | None = None  # the context's folder name (encoded), for pages and URLs
    interface_slug: str | None = None  # the interface's encoded name


# ------------------------------------------------------------------------ names


def context_dir(directory: str, context: str) -> str:
    """The folder of one context's files."""
    return os.path.join(directory, CTX_DIR, encode_name(context))


def context_file_name(kind: str) -> str:
    """The file name of a context-scope kind (`cpu.rrd`)."""
    return kind + SUFFIX


def interface_file_name(kind: str, interface: str) -> str:
    """The file name of an interface kind (`net-eth0.rrd`, `if-eth0.rrd`)."""
    return _INTERFACE_PREFIX[kind] + encode_name(interface) + SUFFIX


def host_dir(directory: str) -> str:
    return os.path.join(directory, HOST_DIR)


def capacity_path(directory: str) -> str:
    """host/capacity.json: the host's CPUs and memory, kept beside the RRD files so
    that a copy of the directory tells `ctxmon plan` what the host can hold."""
    return os.path.join(directory, HOST_DIR, "capacity.json")


def rrd_path(directory: str, kind: str, context: str | None = None, interface: str | None = None) -> str:
    """Path of one RRD file. `kind` is a catalog file kind; names are the raw (decoded) ones.

    Context-scope kinds (cpu, mem, tasks, ...) need `context`; net needs `context` and
    `interface`; host-if needs `interface`.
    """
    fk = FILE_KIND.get(kind)
    if fk is not None:
        if fk.scope == "context" and context is not None:
            return os.path.join(context_dir(directory, context), context_file_name(kind))
        if fk.scope == "context-interface" and context is not None and interface is not None:
            return os.path.join(context_dir(directory, context), interface_file_name(kind, interface))
        if fk.scope == "host-interface" and interface is not None:
            return os.path.join(host_dir(directory), interface_file_name(kind, interface))
    raise ValueError(f"bad RRD file spec: kind={kind!r} context={context!r} interface={interface!r}")


# -------------------------------------------------------------------- reading


def identify_context_file(path: str, filename: str, context: str, slug: str | None = None) -> RrdFile | None:
    """The RrdFile of `filename` in a context's folder, None when it is not ours."""
    if not filename.endswith(SUFFIX):
        return None
    stem = filename[: -len(SUFFIX)]
    if stem in CONTEXT_KINDS:
        return RrdFile(path, stem, context, None, slug)
    for kind, prefix in _INTERFACE_PREFIX.items():
        if FILE_KIND[kind].scope == "context-interface" and stem.startswith(prefix):
            enc = stem[len(prefix):]
            try:
                return RrdFile(path, kind, context, decode_name(enc), slug, enc)
            except ValueError:
                return None
    return None


def identify_host_file(path: str, filename: str) -> RrdFile | None:
    """The RrdFile of `filename` in the host folder, None when it is not ours."""
    for kind, prefix in _INTERFACE_PREFIX.items():
        if (FILE_KIND[kind].scope == "host-interface" and filename.startswith(prefix)
                and filename.endswith(SUFFIX)):
            enc = filename[len(prefix): -len(SUFFIX)]
            try:
                return RrdFile(path, kind, None, decode_name(enc), None, enc)
            except ValueError:
                return None
    return None


def identify(directory: str, path: str) -> RrdFile | None:
    """What `path` (a file under `directory`) is in the layout, None if not ours."""
    rel = os.path.relpath(path, directory).split(os.sep)
    if len(rel) == 3 and rel[0] == CTX_DIR:
        try:
            context = decode_name(rel[1])
        except ValueError:
            return None
        return identify_context_file(path, rel[2], context, rel[1])
    if len(rel) == 2 and rel[0] == HOST_DIR:
        return identify_host_file(path, rel[1])
    return None


def kind_of(path: str) -> str | None:
    """The kind of a layout file from its name and folder, without the root: for
    readers handed a bare path (`exporters.rrd.fetch`)."""
    parent = os.path.basename(os.path.dirname(path))
    grand = os.path.basename(os.path.dirname(os.path.dirname(path)))
    name = os.path.basename(path)
    if grand == CTX_DIR:
        rf = identify_context_file(path, name, "")
    elif parent == HOST_DIR:
        rf = identify_host_file(path, name)
    else:
        return None
    return rf.kind if rf is not None else None


def is_host_interface_file(filename: str) -> bool:
    return identify_host_file(filename, filename) is not None


def list_rrd_files(directory: str) -> list[RrdFile]:
    """Every RRD file of the layout under `directory` (not the archive), sorted by path.

    Entries whose names `encode_name` cannot have produced are not ours and are skipped.
    """
    found: list[RrdFile] = []
    for entry in scandir(os.path.join(directory, CTX_DIR)):
        if not entry.is_dir(follow_symlinks=False):
            continue
        try:
            context = decode_name(entry.name)
        except ValueError:
            continue
        for f in scandir(entry.path):
            if f.is_file(follow_symlinks=False):
                rf = identify_context_file(f.path, f.name, context, entry.name)
                if rf is not None:
                    found.append(rf)
    for f in scandir(host_dir(directory)):
        if f.is_file(follow_symlinks=False):
            rf = identify_host_file(f.path, f.name)
            if rf is not None:
                found.append(rf)
    found.sort(key=lambda r: r.path)
    return found


def scandir(path: str) -> list[os.DirEntry]:
    """The entries of a folder; none when it cannot be read."""
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return []


# ---------------------------------------------------------------- README block

README_BEGIN = "<!-- RRD files: generated by `python -m exporters.rrdlayout`; edit the catalog -->"
README_END = "<!-- end of the generated RRD file list -->"
_README_PATHS = {
    "context": "ctx/<context>/{kind}.rrd",
    "context-interface": "ctx/<context>/{prefix}<if>.rrd",
    "host-interface": "host/{prefix}<dev>.rrd",
}


def readme_block() -> str:
    """The README's list of RRD files, from the catalog's kinds and this layout."""
    lines = []
    for k in FILE_KINDS:
        path = _README_PATHS[k.scope].format(kind=k.name, prefix=_INTERFACE_PREFIX.get(k.name, ""))
        lines.append(f"{path:<28} {k.readme}".rstrip())
    lines.append(f"{ARCHIVE_DIR + '/':<28} departed contexts, after [rrd] retention (deleted after [rrd] archive_keep)")
    return "\n".join([README_BEGIN, "```", *lines, "```", README_END])


if __name__ == "__main__":
    print(readme_block())
