"""Files omni writes: atomically (a temp file in the same directory, then rename) and private (0600, mkstemp's mode).

A reader never sees half a file, and a crash leaves the old content or the new one, never a mix. The temp file is
named `<name>.tmp-XXXXXX`, so globs on the final names (`*.conf`, `.devinfo`) never match it."""
from __future__ import annotations

import contextlib
import os
import tempfile


def write_atomic(path: str, data: bytes | str, *, fsync: bool = True) -> None:
    """Replace `path` with `data` (mode 0600). `fsync=False` for files that only matter while we run."""
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp-", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
