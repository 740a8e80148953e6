"""Hostile image files: data files that point outside their header, size fields that lie, short writes, and geometry
that a reader would silently repair. Each case gets one definite typed error that says what was expected and what
was found; the inputs are built here, tiny, in ``tmp_path``.
"""

from __future__ import annotations

import gzip
import os
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers_io import write_nifti

from MedAnalysisLib.errors import (
    GeometryError,
    MedAnalysisError,
    MemoryBudgetError,
    OutputError,
    UnreadableFileError,
)
from MedAnalysisLib.io import load_volume, read_header, read_volume, write_volume
from MedAnalysisLib.volume import Volume, rotation_about_axis

#: 2 x 3 x 4 int16 voxels (k, j, i) = 48 bytes; each of the 2 slices is 24 bytes.
VOXELS = np.arange(24, dtype="<i2").reshape(2, 3, 4)
NRRD_HEAD = "NRRD0004\ntype: short\ndimension: 3\nsizes: 4 3 2\nendian: little\nencoding: {encoding}\n"
MHD_HEAD = "ObjectType = Image\nNDims = 3\nDimSize = 4 3 2\nElementType = MET_SHORT\n"


def _refused(error_type: type[MedAnalysisError], match: str, call, *args, **kwargs) -> str:
    with pytest.raises(error_type, match=match) as raised:
        call(*args, **kwargs)
    assert "expected" in str(raised.value)
    return str(raised.value)


def _nhdr(folder: Path, data_file: str, *, encoding: str = "raw", extra: str = "", name: str = "h.nhdr") -> Path:
    path = folder / name
    path.write_text(NRRD_HEAD.format(encoding=encoding) + extra + f"data file: {data_file}\n")
    return path


def _mhd(folder: Path, data_file: str, *, extra: str = "", name: str = "h.mhd") -> Path:
    path = folder / name
    path.write_text(MHD_HEAD + extra + f"ElementDataFile = {data_file}\n")
    return path


def _header(folder: Path, fmt: str, data_file: str) -> Path:
    return _nhdr(folder, data_file) if fmt == "nrrd" else _mhd(folder, data_file)


# ------------------------------------------------------------------------------------ class 2: detached data files
@pytest.mark.parametrize("fmt", ["nrrd", "metaimage"])
@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("{outside}", "absolute paths"),
        ("../outside.raw", "leads outside"),
        ("sub/../../outside.raw", "leads outside"),
        ("link.raw", "leads outside"),  # a symbolic link inside the folder that points outside it
        ("..\\outside.raw", "backslashes"),
        ("C:/outside.raw", "drive letters"),
    ],
)
def test_data_file_outside_the_header_folder(tmp_path: Path, fmt: str, name: str, match: str) -> None:
    outside = tmp_path / "outside.raw"
    outside.write_bytes(VOXELS.tobytes())
    folder = tmp_path / "case"
    (folder / "sub").mkdir(parents=True)
    (folder / "link.raw").symlink_to(outside)
    header = _header(folder, fmt, name.format(outside=outside))
    _refused(UnreadableFileError, match, load_volume, header)
    _refused(UnreadableFileError, match, read_header, header)


@pytest.mark.parametrize("fmt", ["nrrd", "metaimage"])
@pytest.mark.parametrize("listing", ["LIST\ns0.raw\n../outside.raw", "../s%d.raw 0 1 1"])
def test_list_and_pattern_entries_outside_the_folder(tmp_path: Path, fmt: str, listing: str) -> None:
    (tmp_path / "outside.raw").write_bytes(VOXELS[1].tobytes())
    (tmp_path / "s0.raw").write_bytes(VOXELS[0].tobytes())
    (tmp_path / "s1.raw").write_bytes(VOXELS[1].tobytes())
    folder = tmp_path / "case"
    folder.mkdir()
    (folder / "s0.raw").write_bytes(VOXELS[0].tobytes())
    _refused(UnreadableFileError, "leads outside", load_volume, _header(folder, fmt, listing))


def _special_file(path: Path, kind: str) -> socket.socket | None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        return server
    return None


@pytest.mark.parametrize("fmt", ["nrrd", "metaimage"])
@pytest.mark.parametrize(("kind", "shown"), [("fifo", "a FIFO"), ("folder", "a folder"), ("socket", "a socket")])
def test_data_file_that_is_not_a_regular_file_is_refused_before_opening(
    tmp_path: Path, monkeypatch, fmt: str, kind: str, shown: str
) -> None:
    """Opening a FIFO would block forever: the refusal comes from stat alone (the test would hang otherwise)."""
    monkeypatch.chdir(tmp_path)  # a short relative name keeps the socket path under the AF_UNIX limit
    server = _special_file(Path("d.raw"), kind)
    try:
        message = _refused(UnreadableFileError, f"to be a regular file, got {shown}", load_volume, _header(tmp_path, fmt, "d.raw"))
        assert "d.raw" in message
    finally:
        if server is not None:
            server.close()


@pytest.mark.parametrize("name", ["h.nii", "h.nii.gz", "h.nhdr", "h.mha"])
def test_header_that_is_a_fifo_is_refused_before_opening(tmp_path: Path, name: str) -> None:
    os.mkfifo(tmp_path / name)
    _refused(UnreadableFileError, "got a folder or special file", load_volume, tmp_path / name)


def test_missing_data_file(tmp_path: Path) -> None:
    _refused(UnreadableFileError, "expected the data file gone.raw beside h.nhdr, got none", read_header, _nhdr(tmp_path, "gone.raw"))


def _slices(folder: Path, names: list[str]) -> None:
    for index, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(VOXELS[index].tobytes())


@pytest.mark.parametrize(
    ("fmt", "data_file", "files"),
    [
        ("nrrd", "v.raw", None),
        ("nrrd", "sub/v.raw", None),
        ("nrrd", "LIST\ns0.raw\ns1.raw", ["s0.raw", "s1.raw"]),
        ("nrrd", "LIST 2\ns0.raw\ns1.raw", ["s0.raw", "s1.raw"]),
        ("nrrd", "s%03d.raw 1 2 1", ["s001.raw", "s002.raw"]),
        ("nrrd", "s%03d.raw 1 2 1 2", ["s001.raw", "s002.raw"]),
        ("metaimage", "v.raw", None),
        ("metaimage", "sub/v.raw", None),
        ("metaimage", "LIST\ns0.raw\ns1.raw", ["s0.raw", "s1.raw"]),
        ("metaimage", "LIST 2D\ns0.raw\ns1.raw", ["s0.raw", "s1.raw"]),
        ("metaimage", "s%d.raw 0 1 1", ["s0.raw", "s1.raw"]),
    ],
)
def test_detached_forms_simpleitk_accepts_are_read_and_sized(tmp_path: Path, fmt: str, data_file: str, files: list[str] | None) -> None:
    if files is None:
        (tmp_path / data_file).parent.mkdir(exist_ok=True)
        (tmp_path / data_file).write_bytes(VOXELS.tobytes())
        files = [data_file]
    else:
        _slices(tmp_path, files)
    header = _header(tmp_path, fmt, data_file)
    np.testing.assert_array_equal(load_volume(header).array, VOXELS)
    last = tmp_path / files[-1]
    last.write_bytes(last.read_bytes()[:-2])
    _refused(UnreadableFileError, "as its header declares.*got 22|as its header declares.*got 46", load_volume, header)
    last.write_bytes(last.read_bytes() + b"\0\0\0\0")
    _refused(UnreadableFileError, "got more: the file holds data its header does not describe", load_volume, header)


@pytest.mark.parametrize(
    ("fmt", "data_file", "match"),
    [
        ("nrrd", "LIST 1\ns0.raw\ns1.raw", "one file per slice"),
        ("nrrd", "s%d.raw 0 1 1 1", "data-file pattern"),
        ("nrrd", "s%d.raw 0 1 0", "positive STEP"),
        ("nrrd", "s%d.raw 1 0 1", "MIN <= MAX"),
        ("nrrd", "s%d%d.raw 0 1 1", "data-file pattern"),
        ("nrrd", "s%s.raw 0 1 1", "data-file pattern"),
        ("nrrd", "LIST\ns0.raw", r"expected 2 data files \(one per slice\)"),
        ("metaimage", "LIST 1D\ns0.raw\ns1.raw", "one file per slice"),
        ("metaimage", "s%d.raw 0 1 1 2", "data-file pattern"),  # MetaIO returns uninitialised memory for this one
        ("metaimage", "s%d.raw 0 2 1", r"expected 2 data files"),
    ],
)
def test_list_forms_that_cannot_be_checked_are_refused(tmp_path: Path, fmt: str, data_file: str, match: str) -> None:
    _slices(tmp_path, ["s0.raw", "s1.raw"])
    (tmp_path / "s2.raw").write_bytes(VOXELS[0].tobytes())
    _refused(UnreadableFileError, match, load_volume, _header(tmp_path, fmt, data_file))


def test_compressed_detached_data(tmp_path: Path) -> None:
    (tmp_path / "v.raw.gz").write_bytes(gzip.compress(VOXELS.tobytes()))
    header = _nhdr(tmp_path, "v.raw.gz", encoding="gzip")
    np.testing.assert_array_equal(load_volume(header).array, VOXELS)
    (tmp_path / "v.raw.gz").write_bytes(gzip.compress(VOXELS.tobytes() + b"\0\0"))
    _refused(UnreadableFileError, "got more", load_volume, header)
    zpath = tmp_path / "v.zraw"
    zpath.write_bytes(zlib.compress(VOXELS.tobytes()))
    mhd = _mhd(tmp_path, "v.zraw", extra=f"CompressedData = True\nCompressedDataSize = {zpath.stat().st_size}\n")
    np.testing.assert_array_equal(load_volume(mhd).array, VOXELS)
    zpath.write_bytes(zlib.compress(VOXELS.tobytes()[:40]))
    _refused(UnreadableFileError, "CompressedDataSize", load_volume, mhd)


def test_analyze_and_two_file_nifti_pairs_are_refused(tmp_path: Path) -> None:
    nifti = write_nifti(tmp_path / "v.nii", VOXELS, np.eye(4))
    data = bytearray(nifti.read_bytes())
    (tmp_path / "v.hdr").write_bytes(bytes(data[:348]))
    (tmp_path / "v.img").write_bytes(bytes(data[352:]))
    _refused(UnreadableFileError, "expected a file ending in", load_volume, tmp_path / "v.hdr")
    data[344:348] = b"ni1\0"
    nifti.write_bytes(bytes(data))
    _refused(UnreadableFileError, r"single-file NIfTI.*\.hdr/\.img pairs are not read", load_volume, nifti)


# ------------------------------------------------------------------------------------ class 3: size fields that lie
def _nii_gz(tmp_path: Path, name: str = "v.nii.gz") -> tuple[Path, bytes]:
    array = np.arange(8 * 9 * 10, dtype=np.int16).reshape(8, 9, 10)
    raw = write_nifti(tmp_path / "plain.nii", array, np.eye(4)).read_bytes()
    return tmp_path / name, raw


def test_truncated_gzip_with_a_trailer_claiming_the_full_length(tmp_path: Path) -> None:
    """The bug: the trailer's ISIZE was trusted, SimpleITK zero-filled the missing slices and convert exited 0."""
    path, raw = _nii_gz(tmp_path)
    packed = gzip.compress(raw)
    cut = packed[: len(packed) // 2] + packed[-8:]  # half the deflate stream, then the original CRC and ISIZE
    path.write_bytes(cut)
    assert struct.unpack("<I", cut[-4:])[0] == len(raw)
    _refused(UnreadableFileError, "expected one complete gzip stream", load_volume, path)
    _refused(UnreadableFileError, "expected one complete gzip stream", read_header, path)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda p, raw: p[:-8] + b"\0\0\0\0" + p[-4:], "incorrect data check"),  # CRC
        (lambda p, raw: p[:-4] + struct.pack("<I", 5), "incorrect length check"),  # ISIZE
        (lambda p, raw: p + b"trailing garbage", "trailing data"),
        (lambda p, raw: p[:-30], "ends inside a compressed member"),
        (lambda p, raw: gzip.compress(raw + b"\0" * 16), "got more"),  # declared size smaller than the payload
        (lambda p, raw: gzip.compress(raw[:-16]), "as its header declares"),
        (lambda p, raw: gzip.compress(raw[:500]) + gzip.compress(raw[500:-2]), "as its header declares"),
    ],
    ids=["crc", "isize", "garbage", "cut", "surplus", "short", "short-multi-member"],
)
def test_gzip_streams_that_disagree_with_the_header(tmp_path: Path, mutate, match: str) -> None:
    path, raw = _nii_gz(tmp_path)
    path.write_bytes(mutate(gzip.compress(raw), raw))
    _refused(UnreadableFileError, match, load_volume, path)


def test_multi_member_gzip_is_read_whole(tmp_path: Path) -> None:
    path, raw = _nii_gz(tmp_path)
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    np.testing.assert_array_equal(load_volume(path).array, load_volume(tmp_path / "plain.nii").array)


def test_memory_budget_comes_before_any_decompression(tmp_path: Path, monkeypatch) -> None:
    import MedAnalysisLib.io.files as files

    def never(*args, **kwargs):
        raise AssertionError("decompressed before the memory budget was checked")

    monkeypatch.setattr(files, "inflated_size", never)
    path, raw = _nii_gz(tmp_path)
    path.write_bytes(gzip.compress(raw))
    _refused(MemoryBudgetError, "memory budget of 1.0 KiB", load_volume, path, memory_budget_bytes=1024)
    _refused(MemoryBudgetError, "memory budget of 1.0 KiB", read_header, path, memory_budget_bytes=1024)
    nrrd = tmp_path / "v.nrrd"
    nrrd.write_bytes((NRRD_HEAD.format(encoding="gzip") + "\n").encode() + gzip.compress(VOXELS.tobytes()))
    _refused(MemoryBudgetError, "memory budget of 32 B", load_volume, nrrd, memory_budget_bytes=32)


def _nifti_edit(tmp_path: Path, **fields: tuple[int, str, object]) -> Path:
    path = write_nifti(tmp_path / "v.nii", VOXELS, np.diag([2.0, 3.0, 4.0, 1.0]))
    data = bytearray(path.read_bytes())
    for offset, fmt, value in fields.values():
        struct.pack_into(fmt, data, offset, *(value if isinstance(value, tuple) else (value,)))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"bitpix": (72, "<h", 8)}, "expected bitpix 16 for NIfTI datatype 4, got 8"),
        ({"bitpix": (72, "<h", 32)}, "expected bitpix 16 for NIfTI datatype 4, got 32"),
        ({"datatype": (70, "<h", 3)}, "expected a NIfTI datatype code"),
        ({"vox_offset": (108, "<f", 4096.0)}, "expected at least 4144 bytes"),
        ({"vox_offset": (108, "<f", 0.0)}, "vox_offset from 352"),
        ({"vox_offset": (108, "<f", 352.5)}, "whole NIfTI vox_offset"),
        ({"scale": (112, "<2f", (0.0, 5.0))}, "non-zero NIfTI scl_slope when scl_inter is set"),
    ],
)
def test_nifti_header_fields_that_disagree(tmp_path: Path, fields: dict, match: str) -> None:
    _refused(UnreadableFileError, match, load_volume, _nifti_edit(tmp_path, **fields))


def test_nifti_with_trailing_bytes_and_the_standard_zero_slope(tmp_path: Path) -> None:
    path = _nifti_edit(tmp_path, scale=(112, "<2f", (0.0, 0.0)))  # slope 0 and no intercept: unscaled, as the standard says
    np.testing.assert_array_equal(load_volume(path).array, VOXELS)
    path.write_bytes(path.read_bytes() + b"\0\0")
    _refused(UnreadableFileError, "expected exactly 400 bytes.*got more", load_volume, path)


@pytest.mark.parametrize(
    ("extra", "payload", "match"),
    [
        ("", VOXELS.tobytes()[:-1], "as its header declares"),
        ("", VOXELS.tobytes() + b"\0", "got more"),
        ("byte skip: 4\n", b"\0" * 4 + VOXELS.tobytes() + b"\0", "expected exactly 52 bytes"),
        ("byte skip: -2\n", VOXELS.tobytes(), "byte skip from -1"),
        ("line skip: 2\n", b"a\n" + b"x" * 48, "expected 2 lines to skip"),
    ],
)
def test_nrrd_payload_that_disagrees_with_the_header(tmp_path: Path, extra: str, payload: bytes, match: str) -> None:
    path = tmp_path / "v.nrrd"
    path.write_bytes((NRRD_HEAD.format(encoding="raw") + extra + "\n").encode() + payload)
    _refused(UnreadableFileError, match, load_volume, path)


@pytest.mark.parametrize(
    ("head", "match"),
    [
        (NRRD_HEAD.replace("sizes: 4 3 2", "sizes: 4 3"), "dimension 3 and sizes"),
        (NRRD_HEAD.replace("type: short", "type: complex"), "expected a NRRD type"),
        (NRRD_HEAD.replace("{encoding}", "bzip2"), "expected NRRD encoding raw, gzip, ascii or hex"),
        (NRRD_HEAD.replace("{encoding}", "gzip") + "byte skip: -1\n", "byte skip -1 only with raw"),
    ],
)
def test_nrrd_fields_that_cannot_describe_the_payload(tmp_path: Path, head: str, match: str) -> None:
    path = tmp_path / "v.nrrd"
    path.write_bytes((head.replace("{encoding}", "raw") + "\n").encode() + VOXELS.tobytes())
    _refused(UnreadableFileError, match, load_volume, path)


def test_header_fields_given_twice_or_after_the_data_file(tmp_path: Path) -> None:
    """A duplicate field could be read one way here and the other way by SimpleITK; a field after ``data file`` is
    still a field (only a LIST must come last)."""
    (tmp_path / "v.raw").write_bytes(VOXELS.tobytes())
    _refused(UnreadableFileError, "expected each header field once, got 'sizes' twice", load_volume,
             _nhdr(tmp_path, "v.raw", extra="sizes: 4 3 1\n"))
    late = tmp_path / "late.nhdr"
    late.write_text(NRRD_HEAD.format(encoding="raw") + "data file: v.raw\nspacings: 1 nan 1\n")
    _refused(GeometryError, "expected positive finite voxel sizes for spacings", load_volume, late)
    _refused(UnreadableFileError, "expected each header field once, got 'ndims' twice", load_volume,
             _mhd(tmp_path, "v.raw", extra="NDims = 2\n"))


@pytest.mark.parametrize("name", ["h.nrrd", "h.seg.nrrd", "h.mha"])
def test_single_file_suffixes_with_a_data_file_field_are_checked_too(tmp_path: Path, name: str) -> None:
    (tmp_path / "outside.raw").write_bytes(VOXELS.tobytes())
    (tmp_path / "case").mkdir()
    make = _mhd if name.endswith(".mha") else _nhdr
    _refused(UnreadableFileError, "leads outside", load_volume, make(tmp_path / "case", "../outside.raw", name=name))


def test_nrrd_skips_that_match_are_read(tmp_path: Path) -> None:
    path = tmp_path / "v.nrrd"
    path.write_bytes((NRRD_HEAD.format(encoding="raw") + "byte skip: 4\n\n").encode() + b"SKIP" + VOXELS.tobytes())
    np.testing.assert_array_equal(load_volume(path).array, VOXELS)
    (tmp_path / "d.raw").write_bytes(b"line one\nline two\n" + VOXELS.tobytes())
    np.testing.assert_array_equal(load_volume(_nhdr(tmp_path, "d.raw", extra="line skip: 2\n")).array, VOXELS)


_ZLIB = zlib.compress(VOXELS.tobytes())


@pytest.mark.parametrize(
    ("payload", "declared", "match"),
    [
        (_ZLIB, len(_ZLIB) + 10, r"expected at least \d+ bytes of compressed voxel data \(CompressedDataSize\)"),
        (_ZLIB, len(_ZLIB) - 5, "compressed voxel data .*got more"),
        (_ZLIB, None, "expected CompressedDataSize with CompressedData = True"),
        (_ZLIB[: len(_ZLIB) // 2], len(_ZLIB) // 2, "ends inside a compressed member"),
        (zlib.compress(VOXELS.tobytes()[:40]), "exact", r"expected at least 48 bytes of voxel data"),
        (zlib.compress(VOXELS.tobytes() + b"\0\0"), "exact", "expected exactly 48 bytes of voxel data"),
        (gzip.compress(VOXELS.tobytes()), "exact", "expected one complete zlib stream"),
        (_ZLIB + b"junk", "exact", "trailing data"),
    ],
    ids=["size-too-large", "size-too-small", "no-size", "cut", "short", "surplus", "gzip-not-zlib", "garbage"],
)
def test_metaimage_compressed_payload_that_disagrees(tmp_path: Path, payload: bytes, declared, match: str) -> None:
    """MetaIO returned uninitialised memory as voxels for most of these."""
    size = len(payload) if declared == "exact" else declared
    extra = "" if size is None else f"CompressedDataSize = {size}\n"
    path = tmp_path / "v.mha"
    path.write_bytes((MHD_HEAD + "CompressedData = True\n" + extra + "ElementDataFile = LOCAL\n").encode() + payload)
    _refused(UnreadableFileError, match, load_volume, path)


@pytest.mark.parametrize(
    ("extra", "match"),
    [("HeaderSize = 4\n", "HeaderSize 0 with ElementDataFile = LOCAL"), ("BinaryData = False\n", "BinaryData = False")],
)
def test_metaimage_layouts_that_cannot_be_checked(tmp_path: Path, extra: str, match: str) -> None:
    path = tmp_path / "v.mha"
    path.write_bytes((MHD_HEAD + extra + "ElementDataFile = LOCAL\n").encode() + VOXELS.tobytes())
    _refused(UnreadableFileError, match, load_volume, path)


# ------------------------------------------------------------------------------------ class 4: the disk fills up
_CHILD = """
import resource, signal, sys
import numpy as np
from MedAnalysisLib.errors import OutputError
from MedAnalysisLib.io import write_volume
from MedAnalysisLib.volume import Volume
volume = Volume(np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
try:
    write_volume(volume, sys.argv[1])
except OutputError as error:
    print("OutputError:", error)
"""


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz", "v.nrrd", "v.mha", "v.nhdr"])
def test_short_write_under_a_file_size_limit_leaves_nothing(tmp_path: Path, name: str) -> None:
    """ITK's NIfTI writer only prints a short write on stderr; the truncated file must never get the final name."""
    target = tmp_path / name
    run = subprocess.run([sys.executable, "-c", _CHILD, str(target)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"OutputError: expected {'to write' if 'nii' not in name else name}"), run.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_convert_under_a_file_size_limit_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    source = write_volume(Volume(np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32)), tmp_path / "in.nrrd")
    out = tmp_path / "out" / "v.nii"
    out.parent.mkdir()
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))\n"
        "from MedAnalysisLib.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    run = subprocess.run([sys.executable, "-c", script, "convert", str(source), str(out), "--progress", "none"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "expected v.nii to be written completely" in errors[0]
    assert "Traceback" not in run.stderr
    assert list(out.parent.iterdir()) == []


def test_write_volume_verifies_before_renaming(tmp_path: Path, monkeypatch) -> None:
    import SimpleITK as sitk

    target = tmp_path / "keep.nii.gz"
    write_volume(Volume(np.ones((4, 5, 6), np.int16)), target)
    before = target.read_bytes()
    real_write = sitk.WriteImage

    def short_write(image, name, compress=False):
        real_write(image, name, compress)
        Path(name).write_bytes(Path(name).read_bytes()[:-40])

    monkeypatch.setattr(sitk, "WriteImage", short_write)
    _refused(OutputError, "expected keep.nii.gz to be written completely", write_volume, Volume(np.zeros((4, 5, 6), np.int16)), target)

    def other_grid(image, name, compress=False):
        image.SetSpacing((9.0, 9.0, 9.0))
        real_write(image, name, compress)

    monkeypatch.setattr(sitk, "WriteImage", other_grid)
    _refused(OutputError, r"expected keep.nii.gz to read back with shape \(4, 5, 6\)", write_volume, Volume(np.zeros((4, 5, 6), np.int16)), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.nii.gz"]


# ------------------------------------------------------------------------------------ class 12: silent repairs
@pytest.mark.parametrize("value", [0.0, -2.0, float("nan"), float("inf")])
def test_nifti_voxel_size_is_never_replaced_by_1mm(tmp_path: Path, value: float) -> None:
    path = _nifti_edit(tmp_path, pixdim=(80, "<f", value))
    _refused(GeometryError, r"expected positive finite NIfTI voxel sizes pixdim\[1..3\]", load_volume, path)


def _qform(quatern: tuple[float, ...], qfac: float = 1.0) -> dict:
    return {"qform_code": (252, "<h", 1), "sform_code": (254, "<h", 0), "quatern": (256, "<6f", quatern),
            "qfac": (76, "<f", qfac)}


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (_qform((float("nan"), 0, 0, 1, 2, 3)), "finite NIfTI quaternion"),
        (_qform((0, 0, 0, float("nan"), 2, 3)), "finite NIfTI quaternion"),
        (_qform((1, 1, 0, 1, 2, 3)), r"b\^2\+c\^2\+d\^2 <= 1"),
        (_qform((0, 0, 0, 1, 2, 3), 5.0), "qfac"),
        ({"qform_code": (252, "<h", 0), "sform_code": (254, "<h", 0)}, "expected a NIfTI orientation"),
        ({"sform": (280, "<4f", (float("nan"), 0, 0, 0))}, "three non-zero finite axes"),
        ({"sform": (280, "<4f", (0, 0, 0, 0))}, "three non-zero finite axes"),
        ({"pixdim": (80, "<f", 7.0)}, r"equal to the lengths of the sform axes, got pixdim \[7.0, 3.0, 4.0\]"),
    ],
    ids=["nan-quaternion", "nan-qoffset", "long-quaternion", "qfac", "no-orientation", "nan-sform", "zero-column",
         "pixdim-vs-sform"],
)
def test_nifti_orientation_is_never_guessed(tmp_path: Path, fields: dict, match: str) -> None:
    _refused(GeometryError, match, load_volume, _nifti_edit(tmp_path, **fields))


def test_valid_qform_and_left_handed_qfac_are_read(tmp_path: Path) -> None:
    volume = load_volume(_nifti_edit(tmp_path, **_qform((0, 0, 0, 1, 2, 3), -1.0)))
    assert volume.spacing == (2.0, 3.0, 4.0) and volume.origin == (-1.0, -2.0, 3.0)
    np.testing.assert_allclose(volume.direction, np.diag([-1.0, -1.0, -1.0]))


@pytest.mark.parametrize(
    "extra",
    [
        "spacings: 0 2 3\n", "spacings: -1 2 3\n", "spacings: nan 2 3\n", "spacings: inf 2 3\n",
        "space: left-posterior-superior\nspace directions: (0,0,0) (0,2,0) (0,0,3)\n",
        "space: left-posterior-superior\nspace directions: none (0,2,0) (0,0,3)\n",
        "space: left-posterior-superior\nspace directions: (nan,0,0) (0,2,0) (0,0,3)\n",
    ],
)
def test_nrrd_spacing_is_never_replaced_by_1mm(tmp_path: Path, extra: str) -> None:
    path = tmp_path / "v.nrrd"
    path.write_bytes((NRRD_HEAD.format(encoding="raw") + extra + "\n").encode() + VOXELS.tobytes())
    _refused(GeometryError, "expected (positive finite voxel sizes|a non-zero space direction|finite numbers)", load_volume, path)


@pytest.mark.parametrize("extra", ["ElementSpacing = 0 2 3\n", "ElementSpacing = -1 2 3\n", "ElementSize = 0 1 1\n"])
def test_metaimage_spacing_is_never_replaced(tmp_path: Path, extra: str) -> None:
    path = tmp_path / "v.mha"
    path.write_bytes((MHD_HEAD + extra + "ElementDataFile = LOCAL\n").encode() + VOXELS.tobytes())
    _refused(GeometryError, "expected positive finite voxel sizes", load_volume, path)


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr", ".mha", ".mhd", ".nii", ".nii.gz"])
def test_vector_and_oblique_files_we_write_still_read(tmp_path: Path, suffix: str) -> None:
    """The checks above refuse nothing our own writer produces (vector NRRD axes carry 'none' legitimately)."""
    volume = Volume(np.ones((3, 4, 5, 2), np.float32), spacing=(0.7, 0.9, 2.5), direction=rotation_about_axis("y", 30))
    back = read_volume(write_volume(volume, tmp_path / f"v{suffix}"))
    assert back.array.shape == (3, 4, 5, 2)
    np.testing.assert_allclose(back.spacing, volume.spacing, rtol=1e-6)
