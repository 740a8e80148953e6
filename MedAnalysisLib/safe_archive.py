"""Safe extraction and creation of .zip archives (model bundles handed to us by users).

An archive from elsewhere is hostile until proven otherwise. :func:`safe_extract` inspects every entry before a
single byte is written and refuses the whole archive if any entry

* has an absolute path, a drive letter, a backslash, or a ``..`` component (path traversal, "zip slip");
* is a symbolic link, a hard link or any other special file (only regular files and folders are accepted);
* repeats a name already seen (the second copy would silently replace the first);
* would take the archive over the member-count or total-size cap, or expands more than ``max_ratio`` times its
  compressed size (zip bombs).

Sizes are also counted while decompressing, so a header that lies about its size cannot get past the caps.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from MedAnalysisLib.errors import UnsafeArchiveError
from MedAnalysisLib.io.atomic import atomic_directory, atomic_path

#: Default caps: a bundle is a JSON file, an HDF5 weights file and a few small sidecars.
DEFAULT_MAX_TOTAL_BYTES = 4 * 1024**3
DEFAULT_MAX_MEMBERS = 256
DEFAULT_MAX_RATIO = 200.0

_CHUNK = 1 << 20
#: What the zipfile module raises on a damaged archive (bad local headers, corrupt deflate streams, unsupported
#: compression methods, offsets past the end); turned into :class:`UnsafeArchiveError`.
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError)
#: Longest entry name and path component accepted (longer ones cannot be created on common file systems).
_MAX_NAME_BYTES = 1024
_MAX_COMPONENT_BYTES = 255


def _member_kind(info: zipfile.ZipInfo) -> str:
    """``"dir"``, ``"file"`` or ``"special"`` from the Unix mode bits a zip entry may carry."""
    mode = (info.external_attr >> 16) & 0xFFFF
    # Permission bits without a file type (as Python's ZipFile.writestr stores them) describe a regular file.
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "special"
    return "dir" if info.is_dir() else "file"


def check_member_name(name: str) -> PurePosixPath:
    """Return the entry name as a relative path, or raise :class:`UnsafeArchiveError` if it could escape."""
    if not name or "\x00" in name:
        raise UnsafeArchiveError(f"expected a non-empty archive entry name, got {name!r}")
    if "\\" in name:
        raise UnsafeArchiveError(f"expected '/'-separated archive entry names, got {name!r} (contains a backslash)")
    path = PurePosixPath(name)
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"expected relative archive entry names, got the absolute path {name!r}")
    if any(part == ".." for part in path.parts):
        raise UnsafeArchiveError(f"expected archive entries inside the archive, got {name!r} (contains '..')")
    if len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES or any(
        len(part.encode("utf-8", "surrogateescape")) > _MAX_COMPONENT_BYTES for part in path.parts
    ):
        raise UnsafeArchiveError(
            f"expected archive entry names of at most {_MAX_NAME_BYTES} bytes (components of at most "
            f"{_MAX_COMPONENT_BYTES}), got one of {len(name)} characters"
        )
    return path


def inspect_archive(
    archive: zipfile.ZipFile,
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_ratio: float = DEFAULT_MAX_RATIO,
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Validate every entry of an open archive; return ``(info, relative path)`` pairs of the regular files."""
    infos = archive.infolist()
    if len(infos) > max_members:
        raise UnsafeArchiveError(f"expected at most {max_members} archive entries, got {len(infos)}")
    seen: set[str] = set()
    files: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    total = 0
    for info in infos:
        path = check_member_name(info.filename)
        key = path.as_posix().rstrip("/")
        if key in seen:
            raise UnsafeArchiveError(f"expected unique archive entry names, got {info.filename!r} twice")
        seen.add(key)
        kind = _member_kind(info)
        if kind == "special":
            raise UnsafeArchiveError(
                f"expected only regular files and folders in the archive, got a link or special file {info.filename!r}"
            )
        if kind == "dir":
            continue
        if info.flag_bits & 0x1:
            raise UnsafeArchiveError(f"expected unencrypted archive entries, got encrypted {info.filename!r}")
        total += info.file_size
        if total > max_total_bytes:
            raise UnsafeArchiveError(f"expected at most {max_total_bytes} bytes once extracted, got more than that")
        if info.file_size > 1024 * 1024 and info.file_size > max_ratio * max(info.compress_size, 1):
            raise UnsafeArchiveError(
                f"expected a compression ratio of at most {max_ratio:g}, got "
                f"{info.file_size / max(info.compress_size, 1):.0f} for {info.filename!r}"
            )
        files.append((info, path))
    return files


def _open_zip(archive_path: str | os.PathLike[str]) -> zipfile.ZipFile:
    """Open a .zip that is a regular file: a FIFO or device would block the reader (the Slicer panel's GUI thread
    when a user picks one) or yield endless bytes, a folder is not an archive."""
    try:
        mode = os.stat(archive_path).st_mode
    except OSError as error:
        raise UnsafeArchiveError(f"expected a readable .zip archive, got {Path(archive_path).name}: "
                                 f"{error.strerror or error}") from error
    if not stat.S_ISREG(mode):
        raise UnsafeArchiveError(f"expected a .zip archive file, got a folder or special file (FIFO, device, "
                                 f"socket) at {Path(archive_path).name!r}")
    try:
        return zipfile.ZipFile(archive_path)
    except _DAMAGED as error:
        raise UnsafeArchiveError(f"expected a readable .zip archive, got {Path(archive_path).name}: {error}") from error


def read_member(
    archive_path: str | os.PathLike[str],
    name: str,
    *,
    max_bytes: int = 16 * 1024**2,
) -> bytes:
    """Read one regular-file entry of a zip archive after validating the whole archive (nothing is extracted).

    Raises:
        UnsafeArchiveError: The archive fails :func:`inspect_archive`, or the entry is larger than ``max_bytes``.
        KeyError: No entry of that name.
    """
    with _open_zip(archive_path) as archive:
        files = dict((path.as_posix(), info) for info, path in inspect_archive(archive))
        info = files[name]
        if info.file_size > max_bytes:
            raise UnsafeArchiveError(f"expected {name!r} to hold at most {max_bytes} bytes, got {info.file_size}")
        try:
            with archive.open(info) as handle:
                data = handle.read(max_bytes + 1)
        except _DAMAGED as error:
            raise UnsafeArchiveError(f"expected a readable entry {name!r}, got a damaged one: {error}") from error
        if len(data) > max_bytes:
            raise UnsafeArchiveError(f"expected {name!r} to hold at most {max_bytes} bytes, got more")
        return data


def list_members(archive_path: str | os.PathLike[str]) -> list[str]:
    """Names of the regular files of a validated archive, in archive order."""
    with _open_zip(archive_path) as archive:
        return [path.as_posix() for _, path in inspect_archive(archive)]


def safe_extract(
    archive_path: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_ratio: float = DEFAULT_MAX_RATIO,
) -> Path:
    """Extract a zip archive into ``destination`` (created; must not exist yet) after validating every entry.

    The folder appears atomically: on any error nothing is left behind.

    Args:
        archive_path: The .zip file.
        destination: Folder to create.
        max_total_bytes: Cap on the extracted size, counted on the actual decompressed bytes.
        max_members: Cap on the number of entries.
        max_ratio: Cap on the decompression ratio of any entry larger than 1 MiB.

    Returns:
        The destination folder.

    Raises:
        UnsafeArchiveError: An entry is unsafe (see the module docstring) or a cap is exceeded.
        FileExistsError: ``destination`` already exists.
    """
    destination = Path(destination)
    if destination.exists():
        raise FileExistsError(f"expected a new extraction folder, got the existing {destination}")
    archive = _open_zip(archive_path)
    with archive, atomic_directory(destination) as temporary:
        root = temporary.resolve()
        written = 0
        for info in archive.infolist():
            path = check_member_name(info.filename)
            target = (root / path).resolve()
            if root != target and root not in target.parents:
                raise UnsafeArchiveError(f"expected archive entries inside the archive, got {info.filename!r}")
        for info, path in inspect_archive(
            archive, max_total_bytes=max_total_bytes, max_members=max_members, max_ratio=max_ratio
        ):
            target = root / path
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(target, "xb") as sink:
                    member_bytes = 0
                    while chunk := source.read(_CHUNK):
                        member_bytes += len(chunk)
                        written += len(chunk)
                        if written > max_total_bytes or member_bytes > max(info.file_size, 0):
                            raise UnsafeArchiveError(
                                f"expected {info.filename!r} to expand to {info.file_size} bytes as its header says "
                                f"(and the archive to at most {max_total_bytes}), got more"
                            )
                        sink.write(chunk)
            except _DAMAGED as error:
                raise UnsafeArchiveError(
                    f"expected a readable entry {info.filename!r}, got a damaged one: {error}"
                ) from error
    return destination


def zip_directory(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Write the regular files under ``source`` into the .zip ``target`` (atomically), names relative to ``source``.

    Links are not followed and not stored; files are stored deflated with sorted names so that the same folder
    gives the same archive contents.
    """
    source = Path(source)
    target = Path(target)
    with atomic_path(target) as temporary, zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            archive.write(path, path.relative_to(source).as_posix())
    return target
