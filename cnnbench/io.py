"""Atomic file writes: a reader (or a resumed workflow) sees the old file or the new one, never half.
JSON is strict: NaN and infinities are written as null (a bare NaN token breaks strict parsers)."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success it is renamed onto `path`. A folder that
    cannot be written (permissions, read-only, full disk) is one CnnbenchError; nothing half-written stays."""
    from cnnbench.errors import CnnbenchError

    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; results are meant to be shared
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in UNWRITABLE:
            raise
        raise CnnbenchError(f"{path}: cannot write it ({e.strerror}); free space or fix the permissions of "
                            f"{path.parent} and rerun") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def strict(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None (JSON null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(strict(obj), indent=1, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parsed JSON; a missing, unreadable or malformed file is one CnnbenchError naming the path."""
    from cnnbench.errors import CnnbenchError

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CnnbenchError(f"{path}: no such {what}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise CnnbenchError(f"{path}: cannot read this {what} ({type(e).__name__})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if path.suffix.lower() != ".json":  # another kind of file given (a trial passed runs.csv to verify)
            raise CnnbenchError(f"{path}: not a {what} (a {path.suffix or 'suffix-less'} file, not JSON)") from None
        raise CnnbenchError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); the file is truncated or "
                            f"corrupt") from None
