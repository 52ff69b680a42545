"""The one atomic file writer: a temporary file beside the target, then rename.

A reader sees the old content or the new, never a part. On any error the temporary file is
removed (a partial file would only take space on a disk that is already in trouble) and the
`OSError` is raised for the caller to report.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, durable: bool = False) -> None:
    """Replace `path` with `data`; `durable` also fsyncs the file before the rename."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
