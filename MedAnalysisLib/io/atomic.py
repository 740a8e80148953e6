"""Atomic output: write to a temporary name beside the target, then rename into place.

A reader (or a crash) therefore sees either the old file or the complete new one, never a half-written file,
and two processes writing the same name never interleave their bytes.

Nothing is removed that MedAnalysis did not create: a symbolic link is never replaced (that would remove the user's
link), a folder never replaces a file nor a file a folder, and :func:`atomic_directory` replaces an existing folder
only when it is empty or ``replaceable`` says it is an earlier output of the same kind (by default
:func:`is_own_output`). When writing fails, the temporary and any parent folders created for it are removed and the
old target is back in place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from MedAnalysisLib.errors import OutputError
from MedAnalysisLib.sanitize import terminal_field

#: Longest part of a target's name kept in a temporary's name, so that a name near the file system's limit
#: (255 bytes on most) does not fail only because the temporary adds a prefix and a suffix.
_TEMPORARY_NAME_PART = 64

#: Marker files of the folders that MedAnalysis publishes as a whole with the default of :func:`atomic_directory` and
#: may publish again (every listed name must be present): so far the training checkpoint. Bundles and ensembles pass
#: their own test (:func:`MedAnalysisLib.bundles.storage.is_bundle_folder`), which reads their marker files.
OWN_MARKERS: tuple[tuple[str, ...], ...] = (("state.json", "last.weights.h5"),)
#: Every file such a folder may hold, by its markers; anything else in it is the user's and blocks replacing it.
OWN_FILES: dict[tuple[str, ...], frozenset[str]] = {
    ("state.json", "last.weights.h5"): frozenset({"state.json", "last.weights.h5", "best.weights.h5", "optimizer.npz",
                                                  "training_log.csv"}),
}


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


def absolute_target(target: str | os.PathLike[str]) -> Path:
    """``target`` as an absolute path whose last part is a real name (``.``, ``..`` and ``""`` resolved), the last
    part itself not resolved, so that a link there can be seen and refused."""
    path = Path(os.path.abspath(os.fspath(target) or "."))
    if path.name in ("", ".", ".."):
        return path.resolve()
    return path.parent.resolve() / path.name


def refuse_link(target: Path, what: str = "an output") -> None:
    """Raise :class:`OutputError` when ``target`` is a symbolic link (dangling or not): replacing it would remove
    the user's link, and writing through it would write somewhere the path does not name."""
    if target.is_symlink():
        raise OutputError(f"expected {what} at a path that is not a symbolic link, got a link at "
                          f"{terminal_field(target)}; links are never replaced, name the real path instead")


def _missing_parents(target: Path) -> list[Path]:
    """The ancestors of ``target`` that do not exist yet, outermost first."""
    missing = []
    for parent in target.parents:
        if parent.exists() or parent.is_symlink():
            break
        missing.append(parent)
    return missing[::-1]


def _make_parents(target: Path) -> list[Path]:
    """Create the missing parent folders of ``target``; return those created, so that a failure can remove them."""
    missing = _missing_parents(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except BaseException:
        _remove_created(missing)
        raise
    return missing


def _annotate(error: BaseException, action: str, target: Path) -> None:
    """Add "while ACTION TARGET" to an operating-system error, once, so that the one line the command line shows
    names the output and not only a temporary's name (:func:`MedAnalysisLib.cli.describe_os_error`)."""
    if isinstance(error, OSError) and not any(note.startswith("while ") for note in getattr(error, "__notes__", [])):
        error.add_note(f"while {action} {target}")


def _remove_created(folders: list[Path]) -> None:
    """Remove folders this module created (innermost first), as long as they are still empty."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _temporary_sibling(target: Path, directory: bool = False) -> Path:
    """A new temporary file (or folder) in ``target``'s folder, named after it (hidden, ``.partial``)."""
    # Keep the final suffix(es) so that writers that choose the format by extension (SimpleITK) still work.
    suffix = "".join(target.suffixes[-2:]) if target.name.endswith((".nii.gz", ".seg.nrrd")) else target.suffix
    if directory:
        prefix = f".{target.name[:_TEMPORARY_NAME_PART]}."
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=target.parent))
    suffix = suffix if len(suffix) <= 16 else ""
    prefix = f".{target.stem[:_TEMPORARY_NAME_PART]}."
    handle, name = tempfile.mkstemp(prefix=prefix, suffix=f".partial{suffix}", dir=target.parent)
    os.close(handle)
    return Path(name)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``, on error removed.

    Raises:
        OutputError: ``target`` is a folder or a symbolic link (before anything is written).

    Example:
        >>> with atomic_path(out / "label.nii.gz") as tmp:
        ...     sitk.WriteImage(image, str(tmp))
    """
    target = absolute_target(target)
    refuse_link(target, "a file")
    if target.is_dir():
        raise OutputError(f"expected a file path to write, got the folder {terminal_field(target)} (a folder is "
                          "never replaced by a file)")
    try:
        created = _make_parents(target)
        try:
            temporary = _temporary_sibling(target)
        except BaseException:
            _remove_created(created)
            raise
    except BaseException as error:
        _annotate(error, "preparing to write", target)
        raise
    try:
        yield temporary
        os.chmod(temporary, _default_mode(directory=False))
        os.replace(temporary, target)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        _remove_created(created)
        _annotate(error, "writing", target)
        raise


def _marker_names(folder: Path) -> set[str]:
    try:
        return {entry.name for entry in folder.iterdir()}
    except OSError:
        return set()


def is_own_output(folder: Path) -> bool:
    """True for a folder MedAnalysis publishes as a whole and may replace: a training checkpoint holding its marker
    files and nothing but checkpoint files, each a regular file (:data:`OWN_MARKERS`); a marker beside the user's
    own files is not enough. Writers of other folders pass their own ``replaceable`` (bundles, the phantom
    writers, the cache do)."""
    names = _marker_names(folder)
    plain = all((folder / name).is_file() and not (folder / name).is_symlink() for name in names)
    return plain and any(set(marker) <= names <= OWN_FILES[marker] for marker in OWN_MARKERS)


def check_directory_target(target: Path, replaceable: Callable[[Path], bool] | None = None) -> None:
    """Refuse a ``target`` that :func:`atomic_directory` would not replace, before any work is done.

    Raises:
        OutputError: ``target`` is a link, a file, or a non-empty folder that ``replaceable`` (default
            :func:`is_own_output`) does not accept.
    """
    refuse_link(target, "a folder")
    if not target.exists():
        return
    if not target.is_dir():
        raise OutputError(f"expected a folder path to write, got the file {terminal_field(target)} (a file is never "
                          "replaced by a folder)")
    if not any(target.iterdir()):
        return
    if not (replaceable or is_own_output)(target):
        raise OutputError(f"expected a new or empty folder, or an earlier output of the same kind, at "
                          f"{terminal_field(target)}, got a folder holding other files, which is never replaced")


def _swap_in(temporary: Path, target: Path) -> None:
    """Rename ``temporary`` onto ``target``; an existing ``target`` is moved aside first and put back if that fails."""
    if not target.exists():
        os.replace(temporary, target)
        return
    backup = _temporary_sibling(target.with_name(target.name[:_TEMPORARY_NAME_PART] + ".old"), directory=True)
    backup.rmdir()
    os.replace(target, backup)
    try:
        os.replace(temporary, target)
    except BaseException:
        os.replace(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str], *,
                     replaceable: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` as a whole.

    An existing ``target`` is replaced only when it is an empty folder or ``replaceable(target)`` is true (default
    :func:`is_own_output`: an earlier training checkpoint of its own files only); anything else is refused before the
    temporary is made (see :func:`check_directory_target`).

    Raises:
        OutputError: The target is refused (nothing was written).
    """
    target = absolute_target(target)
    check_directory_target(target, replaceable)
    try:
        created = _make_parents(target)
        try:
            temporary = _temporary_sibling(target, directory=True)
        except BaseException:
            _remove_created(created)
            raise
    except BaseException as error:
        _annotate(error, "preparing to write the folder", target)
        raise
    try:
        yield temporary
        os.chmod(temporary, _default_mode(directory=True))
        check_directory_target(target, replaceable)  # something may have appeared there while the folder was written
        _swap_in(temporary, target)
    except BaseException as error:
        shutil.rmtree(temporary, ignore_errors=True)
        _remove_created(created)
        _annotate(error, "writing the folder", target)
        raise


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))
