"""Atomic output: write to a temporary name beside the target, then rename into place.

A reader (or a crash) therefore sees either the old file or the complete new one, never a half-written file,
and two processes writing the same name never interleave their bytes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _current_umask() -> int:
    """The process umask, read without changing it where the system allows.

    ``os.umask`` can only read the mask by setting it, and a file another thread creates in between would get the
    temporary mask; Linux reports the mask in ``/proc/self/status``, so that is read first.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _default_mode(directory: bool) -> int:
    """The permissions a plain ``open()``/``mkdir()`` would give under the current umask.

    ``tempfile`` creates private (0600/0700) entries; outputs are meant to be as readable as any other file the
    user writes, so the mode is set explicitly before the rename.
    """
    return (0o777 if directory else 0o666) & ~_current_umask()


def _temporary_sibling(target: Path, directory: bool = False) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Keep the final suffix(es) so that writers that choose the format by extension (SimpleITK) still work.
    suffix = "".join(target.suffixes[-2:]) if target.name.endswith((".nii.gz", ".seg.nrrd")) else target.suffix
    if directory:
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    handle, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".partial{suffix}", dir=target.parent)
    os.close(handle)
    return Path(name)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``, on error removed.

    Example:
        >>> with atomic_path(out / "label.nii.gz") as tmp:
        ...     sitk.WriteImage(image, str(tmp))
    """
    target = Path(target)
    temporary = _temporary_sibling(target)
    try:
        yield temporary
        os.chmod(temporary, _default_mode(directory=False))
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` as a whole."""
    target = Path(target)
    temporary = _temporary_sibling(target, directory=True)
    try:
        yield temporary
        os.chmod(temporary, _default_mode(directory=True))
        if target.exists():
            backup = _temporary_sibling(target.with_name(target.name + ".old"), directory=True)
            backup.rmdir()
            os.replace(target, backup)
            os.replace(temporary, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))
