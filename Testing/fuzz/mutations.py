"""Hypothesis strategies that mutate valid seed files: byte edits biased towards headers, and structured edits of
the fields parsers trust most (NIfTI dims/datatype/pixdim/scale, NRRD and MetaImage header values, the data files
detached headers name, gzip streams and trailers, DICOM attributes, bundle.json values, zip entry names and sizes)."""

from __future__ import annotations

import gzip
import io
import json
import struct
import warnings
import zipfile
from typing import Any

from hypothesis import strategies as st

#: Values that break parsers: zero, negatives, extremes, non-finite numbers.
INTERESTING_INTS = (0, 1, -1, 2, 3, 4, 7, 8, 255, 256, 32767, -32768, 65535, 2**31 - 1, -(2**31))
INTERESTING_FLOATS = (0.0, -0.0, -1.0, 1e-30, 1e30, 3.4e38, float("nan"), float("inf"), float("-inf"))
INTERESTING_TEXT = ("", "0", "-1", "nan", "inf", "-inf", "1e400", "99999999999999999999", "1 2", "a", "\\", "0.5",
                    "1\\2\\3", "-0", " ", "1e-320")

#: NIfTI-1 header fields: (offset, struct format).
NIFTI_FIELDS = ((0, "<i"), *[(40 + 2 * n, "<h") for n in range(8)], (70, "<h"), (72, "<h"),
                *[(76 + 4 * n, "<f") for n in range(8)], (108, "<f"), (112, "<f"), (116, "<f"), (252, "<h"),
                (254, "<h"), *[(256 + 4 * n, "<f") for n in range(6)], *[(280 + 4 * n, "<f") for n in range(12)])


@st.composite
def byte_mutations(draw: Any, seed: bytes, header_bytes: int = 512) -> bytes:
    """1-6 edits (overwrite, flip, insert, delete, truncate), positions biased to the first ``header_bytes``."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        limit = min(len(data), header_bytes) if draw(st.booleans()) else len(data)
        position = draw(st.integers(0, max(limit - 1, 0)))
        operation = draw(st.sampled_from(("set", "flip", "insert", "delete", "truncate", "int")))
        if operation == "set":
            data[position] = draw(st.integers(0, 255))
        elif operation == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "delete":
            del data[position : position + draw(st.integers(1, 64))]
        elif operation == "truncate":
            del data[position:]
        else:
            value = draw(st.sampled_from(INTERESTING_INTS))
            packed = struct.pack("<q", value)[: draw(st.sampled_from((1, 2, 4, 8)))]
            data[position : position + len(packed)] = packed
    return bytes(data)


@st.composite
def nifti_field_mutations(draw: Any, seed: bytes) -> bytes:
    """Overwrite 1-4 NIfTI-1 header fields with interesting values of their type."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        offset, fmt = draw(st.sampled_from(NIFTI_FIELDS))
        if fmt == "<f":
            value: Any = draw(st.sampled_from(INTERESTING_FLOATS) | st.floats(width=32))
        else:
            bits = 16 if fmt == "<h" else 32
            value = draw(st.sampled_from([v for v in INTERESTING_INTS if -(2 ** (bits - 1)) <= v < 2 ** (bits - 1)])
                         | st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))
        struct.pack_into(fmt, data, offset, value)
    return bytes(data)


@st.composite
def text_header_mutations(draw: Any, seed: bytes) -> bytes:
    """Replace the value of 1-3 ``key: value`` / ``Key = value`` header lines (NRRD, MetaImage), or drop a line."""
    separator = b"\n\n" if seed.startswith(b"NRRD") else b"ElementDataFile = LOCAL\n"
    head, found, payload = seed.partition(separator)
    lines = head.split(b"\n")
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(1 if seed.startswith(b"NRRD") else 0, len(lines) - 1))
        line = lines[index]
        cut = line.find(b":") if b":" in line else line.find(b"=")
        if cut < 0 or draw(st.integers(0, 9)) == 0:
            lines[index] = b""
            continue
        values = draw(st.lists(st.sampled_from(INTERESTING_TEXT), min_size=1, max_size=4))
        lines[index] = line[: cut + 1] + b" " + " ".join(values).encode()
    return b"\n".join(lines) + found + payload


#: DICOM attributes the readers use, with the VR pydicom needs to store arbitrary text in them.
DICOM_FIELDS = {
    "Rows": "US", "Columns": "US", "BitsAllocated": "US", "BitsStored": "US", "HighBit": "US",
    "PixelRepresentation": "US", "SamplesPerPixel": "US", "NumberOfFrames": "IS", "InstanceNumber": "IS",
    "ImagePositionPatient": "DS", "ImageOrientationPatient": "DS", "PixelSpacing": "DS", "SliceThickness": "DS",
    "RescaleSlope": "DS", "RescaleIntercept": "DS", "SpacingBetweenSlices": "DS", "PhotometricInterpretation": "CS",
    "Modality": "CS", "ImageType": "CS", "SeriesInstanceUID": "UI", "SOPClassUID": "UI",
}


@st.composite
def dicom_field_mutations(draw: Any, seed: bytes) -> bytes:
    """Set 1-4 header attributes of a seed slice to interesting values (or delete them), then re-encode."""
    import pydicom
    from pydicom import config
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import DataElement, RawDataElement
    from pydicom.tag import Tag

    dataset = pydicom.dcmread(io.BytesIO(seed))
    for _ in range(draw(st.integers(1, 4))):
        keyword = draw(st.sampled_from(sorted(DICOM_FIELDS)))
        vr = DICOM_FIELDS[keyword]
        if draw(st.integers(0, 5)) == 0:
            if keyword in dataset:
                delattr(dataset, keyword)
            continue
        if vr == "US":
            value: Any = draw(st.sampled_from((0, 1, 2, 3, 8, 12, 15, 16, 17, 32, 64, 255, 65535)))
        else:
            value = "\\".join(draw(st.lists(st.sampled_from(INTERESTING_TEXT), min_size=1, max_size=7)))
            value = value.encode("ascii")
            if len(value) % 2:
                value += b" "
            # A raw element is written verbatim: the reader meets the text exactly as a hostile file would carry it.
            tag = tag_for_keyword(keyword)
            dataset[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
            continue
        dataset[tag_for_keyword(keyword)] = DataElement(tag_for_keyword(keyword), vr, value)
    buffer = io.BytesIO()
    previous = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        dataset.save_as(buffer, enforce_file_format=True)
    finally:
        config.settings.writing_validation_mode = previous
    return buffer.getvalue()


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


def _paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(document, dict):
        for key, value in document.items():
            paths.extend(_paths(value, (*prefix, key)))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            paths.extend(_paths(value, (*prefix, index)))
    return paths


@st.composite
def bundle_json_mutations(draw: Any, seed: bytes) -> bytes:
    """Replace 1-3 values anywhere in bundle.json by other JSON values, add unknown keys, or delete keys."""
    document = json.loads(seed)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(document)[1:]))
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(("replace", "replace", "delete", "add")))
        if action == "replace":
            parent[path[-1]] = draw(_json_values())
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=6))] = draw(_json_values())
        else:
            parent.append(draw(_json_values()))
    return json.dumps(document).encode()


@st.composite
def zip_mutations(draw: Any, seed: bytes) -> bytes:
    """Rebuild the seed zip with hostile entry names, duplicate entries, lying sizes, links, or extra entries."""
    with zipfile.ZipFile(io.BytesIO(seed)) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    buffer = io.BytesIO()
    names = ("../evil", "/abs/evil", "bundle/../../evil", "C:/evil", "a\\..\\evil", "bundle/bundle.json", "bundle/",
             "bundle/model.weights.h5", "x" * 300, "bundle/\x00x")
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are one of the hostile cases
        for info, payload in entries:
            if draw(st.integers(0, 3)) == 0:
                info = zipfile.ZipInfo(draw(st.sampled_from(names)))
            if draw(st.integers(0, 5)) == 0:
                info.external_attr = draw(st.sampled_from((0o120777, 0o020644, 0o010644, 0o100644))) << 16
            if draw(st.integers(0, 5)) == 0:
                payload = draw(st.binary(max_size=64)) if draw(st.booleans()) else bytes(draw(st.integers(0, 3 * 2**20)))
            archive.writestr(info, payload)
        for _ in range(draw(st.integers(0, 2))):
            archive.writestr(draw(st.sampled_from(names)), draw(st.binary(max_size=32)))
    data = buffer.getvalue()
    return draw(byte_mutations(data, header_bytes=len(data))) if draw(st.integers(0, 2)) == 0 else data


#: Data-file values a detached header may carry: escapes (absolute, ``..``, a link), special files, lists, patterns.
#: ``{OUTSIDE}`` is replaced by the absolute path of a file outside the header's folder (see ``harness``).
DATA_FILE_NAMES = (
    "v.raw", "sub/v.raw", "{OUTSIDE}", "../outside.raw", "sub/../../outside.raw", "link.raw", "fifo.raw", "sub",
    "missing.raw", "..\\outside.raw", "C:/outside.raw", "/dev/zero", "", "v.raw\x00.txt",
    "LIST\ns0.raw\ns1.raw\ns2.raw\ns3.raw", "LIST\ns0.raw\n../outside.raw\ns2.raw\ns3.raw", "LIST\nfifo.raw",
    "LIST 1\ns0.raw\ns1.raw", "LIST 2D\ns0.raw\ns1.raw\ns2.raw\ns3.raw", "s%d.raw 0 3 1", "../s%d.raw 0 3 1",
    "s%d.raw 0 3 1 2", "s%d.raw 0 3 0", "s%d.raw 3 0 -1", "s%s.raw 0 3 1", "s%d.raw 0 99999999 1",
)


@st.composite
def detached_header_mutations(draw: Any, seed: bytes) -> bytes:
    """Point the data-file field of a detached NRRD/MetaImage header somewhere else, then maybe edit other fields
    (sizes, type, encoding, skips) so that the named files and the declared payload disagree."""
    key = b"data file: " if seed.startswith(b"NRRD") else b"ElementDataFile = "
    head, found, _ = seed.partition(key)
    assert found, "the seed names its data file"
    data = head + key + draw(st.sampled_from(DATA_FILE_NAMES)).encode("latin-1") + b"\n"
    if draw(st.booleans()):
        data = draw(text_header_mutations(data))
    return data


def _gzip_split(seed: bytes) -> tuple[bytes, bytes]:
    """``(prefix, gzip stream)``: the stream starts at the first gzip magic (offset 0 for ``.nii.gz``)."""
    start = seed.find(b"\x1f\x8b\x08")
    assert start >= 0, "the seed holds a gzip stream"
    return seed[:start], seed[start:]


@st.composite
def gzip_mutations(draw: Any, seed: bytes) -> bytes:
    """Edit the gzip stream of a seed the ways that fool a reader trusting the trailer: a lying ISIZE or CRC, a
    member cut short with its trailer put back, several members, an empty member, trailing garbage, and streams
    that inflate to more or fewer bytes than the header declares."""
    prefix, stream = _gzip_split(seed)
    raw = gzip.decompress(stream)
    for _ in range(draw(st.integers(1, 2))):
        operation = draw(st.sampled_from(("isize", "crc", "cut_keep_trailer", "truncate", "members", "empty_member",
                                          "garbage", "surplus", "short")))
        cut = draw(st.integers(1, max(len(stream) - 9, 1)))
        if operation == "isize":
            value = draw(st.sampled_from((0, 1, len(raw) - 1, len(raw) + 1, 2 * len(raw), 2**32 - 1)))
            stream = stream[:-4] + struct.pack("<I", value % 2**32)
        elif operation == "crc":
            stream = stream[:-8] + bytes(b ^ 0xFF for b in stream[-8:-4]) + stream[-4:]
        elif operation == "cut_keep_trailer":
            stream = stream[:cut] + stream[-8:]
        elif operation == "truncate":
            stream = stream[:cut]
        elif operation == "members":
            split = draw(st.integers(0, len(raw)))
            stream = gzip.compress(raw[:split]) + gzip.compress(raw[split:])
        elif operation == "empty_member":
            stream = stream + gzip.compress(b"")
        elif operation == "garbage":
            stream = stream + draw(st.binary(min_size=1, max_size=16))
        elif operation == "surplus":
            stream = gzip.compress(raw + draw(st.binary(min_size=1, max_size=64)))
        else:
            stream = gzip.compress(raw[: draw(st.integers(0, max(len(raw) - 1, 0)))])
    return prefix + stream
