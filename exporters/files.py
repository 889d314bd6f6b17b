"""Writing a file so that no reader ever sees half of it."""

from __future__ import annotations

import os
import tempfile


def write_atomic(path: str, data: bytes, mode: int = 0o644, make_dirs: bool = True) -> None:
    """Write `data` to `path` through a temporary dot-file in the same folder and a
    rename; the temporary file is removed when anything fails. `make_dirs`: create
    the folder first when missing."""
    directory = os.path.dirname(path) or "."
    if make_dirs:
        os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
