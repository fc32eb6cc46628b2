"""Writes that a crash or a kill never leaves half done: write beside, flush to disk, rename.

os.replace alone is atomic for readers but not durable: after a power cut the new name can point
at a file whose data never reached the disk. The file is fsynced before the rename and its folder
after it. A directory is swapped with renameat2(RENAME_EXCHANGE) where Linux offers it, so a
reader always finds either the old or the new directory under the final name.
"""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def replace_durably(temporary: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Moves a finished file `temporary` to `path` after flushing it to disk; flushes the folder."""
    temporary, path = Path(temporary), Path(path)
    if temporary.is_file():
        _fsync_path(temporary)
    os.replace(temporary, path)
    _fsync_path(path.parent)
    return path


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """`path` holds either its old content or all of `data`, never a part."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    try:
        temporary.write_bytes(data)
        return replace_durably(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomically(path, text.encode("utf-8"))


def _exchange(first: Path, second: Path) -> bool:
    """Swaps two existing paths in one step (Linux renameat2); False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    return result == 0


def replace_directory(new: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Moves a finished directory to `final`. With an old `final` the two are exchanged in one
    step, so `final` never goes missing; without renameat2 the old one is renamed away first
    (a moment with no `final`, never a half one)."""
    new, final = Path(new), Path(final)
    for file in new.rglob("*"):
        if file.is_file():
            _fsync_path(file)
    if final.exists() and _exchange(new, final):
        shutil.rmtree(new, ignore_errors=True)          # `new` now holds the old directory
    else:
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(new, final)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_path(final.parent)
    return final
