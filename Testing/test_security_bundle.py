"""Hostile model bundles: nothing a bundle holds is executed, and every bad bundle gets a typed, explained refusal.

Each hostile file is built inside the test from a real, tiny bundle (a 3D U-Net with 4-8 filters, untrained: the
checks never look at what the weights compute). Where a refusal must come *before* deserialisation, the hostile
payload would leave a marker file behind if it were ever run, and the test checks that the marker is absent.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from MedAnalysisLib.bundles import CONFIG_FILE, WEIGHTS_FILE, BundleConfig, load_bundle, read_bundle_config
from MedAnalysisLib.errors import BundleError, MedAnalysisError, UnsafeArchiveError
from MedAnalysisLib.safe_archive import safe_extract

HPARAMS = {"n_classes": 2, "in_channels": 1, "patch_size": [16, 16, 16], "filters": [4, 8], "norm": "batch"}


@pytest.fixture(scope="module")
def bundle_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete, valid bundle folder (built once per module; tests copy it before changing anything)."""
    from helpers_inference import make_cube_plan

    from MedAnalysisLib.bundles import LabelInfo, save_bundle
    from MedAnalysisLib.models import build_model

    config = BundleConfig(
        name="tiny", task="segmentation", family="unet3d", hparams=dict(HPARAMS), plan=make_cube_plan(),
        labels=(LabelInfo(0, "background", (0, 0, 0)), LabelInfo(1, "organ", (200, 80, 60))),
        input={"channels": [{"name": "image", "modality": "MR"}]},
    )
    return save_bundle(tmp_path_factory.mktemp("bundle") / "tiny", build_model("unet3d", **HPARAMS), config)


def _copy(bundle_folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_folder, tmp_path / "bundle"))


def _config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / CONFIG_FILE).read_text())


def _write_config(folder: Path, config: dict[str, Any]) -> None:
    (folder / CONFIG_FILE).write_text(json.dumps(config))


def _rehash(folder: Path) -> None:
    """Make bundle.json claim the current weights (what a hostile author would do): the hash check passes."""
    config = _config(folder)
    config["weights"]["sha256"] = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    _write_config(folder, config)


def _refused(call: Any, *args: Any, match: str, error: type[BundleError] = BundleError) -> str:
    with pytest.raises(error, match=match) as raised:
        call(*args)
    assert "expected" in str(raised.value)
    return str(raised.value)


def test_the_valid_bundle_loads(bundle_folder: Path) -> None:
    """The fixture itself is accepted, so every refusal below is caused by the one hostile change."""
    loaded = load_bundle(bundle_folder)
    assert loaded.config.family == "unet3d" and len(loaded.weights_sha256) == 64


# ----------------------------------------------------------------------------------------------- bundle.json
def _set(path: tuple[Any, ...], value: Any) -> Any:
    def edit(config: dict[str, Any]) -> None:
        target = config
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return edit


def _delete(key: str) -> Any:
    return lambda config: config.pop(key)


CONFIG_EDITS = {
    "unknown top-level key": (_set(("run_this",), "import os"), r"got unknown \['run_this'\]"),
    "unknown label key": (_set(("labels", 1, "script"), "x"), r"got unknown \['script'\]"),
    "unknown plan key": (_set(("plan", "loader"), "pickle"), "expected a valid preprocessing plan"),
    "missing weights": (_delete("weights"), r"to have the keys \['weights'\], they are missing"),
    "schema version 3": (_set(("schema_version",), 3), "expected bundle schema version 1 or 2, got 3"),
    "schema version as text": (_set(("schema_version",), "1"), "expected bundle schema version 1 or 2, got '1'"),
    "schema version true": (_set(("schema_version",), True), "expected bundle schema version 1 or 2, got True"),
    "unknown task": (_set(("task",), "detection"), "expected task to be one of"),
    "family as a list": (_set(("family",), ["unet3d"]), r"expected a model family among .*, got \['unet3d'\]"),
    "family from elsewhere": (_set(("family",), "os.system"), "expected a model family among"),
    "hparams as a list": (_set(("hparams",), [1, 2]), "expected hparams to be a dict, got list"),
    "label value negative": (_set(("labels", 1, "value"), -1), "expected a label value that is an integer >= 0"),
    "label value float": (_set(("labels", 1, "value"), 1.5), "expected a label value that is an integer >= 0, got 1.5"),
    "label value bool": (_set(("labels", 1, "value"), True), "expected a label value that is an integer >= 0, got True"),
    "duplicate label values": (_set(("labels", 1, "value"), 0), r"expected distinct label values, got \[0, 0\]"),
    "colour out of range": (_set(("labels", 1, "color"), [300, 0, 0]), "expected an RGB colour of three integers"),
    "labels as a dict": (_set(("labels",), {"0": "bg"}), "expected labels to be a list, got dict"),
    "channels empty": (_set(("input", "channels"), []), "expected input.channels to be a non-empty list"),
    "channels_first": (_set(("input", "layout"), "channels_first"), "expected input layout channels_last"),
    "overlap 1": (_set(("inference", "overlap"), 1.0), r"expected inference.overlap in \[0, 0.9\], got 1.0"),
    "tta as text": (_set(("inference", "tta"), "yes"), "expected inference.tta true or false, got 'yes'"),
    "postprocess unknown": (_set(("inference", "postprocess"), "shell"), "expected inference.postprocess in"),
    "weights path traversal": (_set(("weights", "file"), "../../model.weights.h5"),
                               "expected weights.file to be a plain file name ending in .weights.h5"),
    "weights as .keras": (_set(("weights", "file"), "model.keras"), "ending in .weights.h5"),
    "weights hidden file": (_set(("weights", "file"), ".weights.h5"), "ending in .weights.h5"),
    "sha256 uppercase": (_set(("weights", "sha256"), "A" * 64), "expected weights.sha256 to be 64 lowercase hex"),
    "sha256 as a number": (_set(("weights", "sha256"), 12), "expected weights.sha256 to be 64 lowercase hex"),
}


@pytest.mark.parametrize("edit", sorted(CONFIG_EDITS), ids=lambda name: name.replace(" ", "-"))
def test_bundle_json_unknown_keys_and_wrong_types(bundle_folder: Path, tmp_path: Path, edit: str) -> None:
    change, message = CONFIG_EDITS[edit]
    folder = _copy(bundle_folder, tmp_path)
    config = _config(folder)
    change(config)
    _write_config(folder, config)
    _refused(read_bundle_config, folder, match=message)
    _refused(load_bundle, folder, match=message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'{"schema_version": NaN}', "expected plain JSON numbers in bundle.json, got NaN"),
        (b'{"schema_version": Infinity}', "expected plain JSON numbers in bundle.json, got Infinity"),
        (b"[" * 100_000, "expected bundle.json to hold valid JSON"),  # nesting deeper than the parser's recursion
        (b"\xff\xfe{}", "expected bundle.json to hold valid JSON"),
        (b"[1, 2]", "expected bundle.json to be a JSON object, got list"),
        (b"", "expected bundle.json to hold valid JSON"),
    ],
    ids=["nan", "infinity", "deep-nesting", "not-utf8", "array", "empty"],
)
def test_bundle_json_that_is_not_plain_json(tmp_path: Path, text: bytes, message: str) -> None:
    (tmp_path / CONFIG_FILE).write_bytes(text)
    _refused(read_bundle_config, tmp_path, match=message)


def test_oversized_bundle_json_is_refused_before_parsing(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_bytes(b" " * (4 * 1024**2 + 1))
    _refused(read_bundle_config, tmp_path, match=r"expected bundle.json of at most 4194304 bytes, got 4194305")


# ------------------------------------------------------------------------------------------------- weights
def test_weights_whose_hash_does_not_match(bundle_folder: Path, tmp_path: Path) -> None:
    folder = _copy(bundle_folder, tmp_path)
    weights = folder / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    message = _refused(load_bundle, folder, match="the weights file was changed or corrupted; refusing to load it")
    assert f"got {actual}" in message and _config(folder)["weights"]["sha256"] in message


def test_weights_that_are_a_symlink_or_missing(bundle_folder: Path, tmp_path: Path) -> None:
    folder = _copy(bundle_folder, tmp_path)
    outside = tmp_path / "elsewhere.weights.h5"
    os.replace(folder / WEIGHTS_FILE, outside)
    _refused(load_bundle, folder, match="expected the weights file 'model.weights.h5' in the bundle, found none")
    (folder / WEIGHTS_FILE).symlink_to(outside)
    _refused(load_bundle, folder, match="expected the weights file 'model.weights.h5' in the bundle, found none")


def test_a_pickle_in_place_of_the_weights_is_never_unpickled(bundle_folder: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    folder = _copy(bundle_folder, tmp_path)
    (folder / WEIGHTS_FILE).write_bytes(pickle.dumps(_Payload(marker)))
    _rehash(folder)
    _refused(load_bundle, folder, match="expected an HDF5 weights file, got another format")
    assert not marker.exists()


def _first_dataset(handle: Any) -> str:
    names: list[str] = []
    handle.visititems(lambda name, item: names.append(name) if hasattr(item, "shape") and not names else None)
    return names[0]


def test_hdf5_weights_with_an_external_link(bundle_folder: Path, tmp_path: Path) -> None:
    """An external link would make the loader read another file on this machine; it is refused, hash or not."""
    import h5py

    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as handle:
        handle["data"] = np.full((4,), 42.0, np.float32)
    folder = _copy(bundle_folder, tmp_path)
    with h5py.File(folder / WEIGHTS_FILE, "r+") as handle:
        name = _first_dataset(handle)
        del handle[name]
        handle[name] = h5py.ExternalLink(str(secret), "/data")
    _rehash(folder)
    _refused(load_bundle, folder, match=r"expected an HDF5 weights file with its data inside it, got a ExternalLink at")


def test_hdf5_weights_with_a_soft_link_or_external_storage(bundle_folder: Path, tmp_path: Path) -> None:
    import h5py

    folder = _copy(bundle_folder, tmp_path)
    with h5py.File(folder / WEIGHTS_FILE, "r+") as handle:
        name = _first_dataset(handle)
        del handle[name]
        handle[name] = h5py.SoftLink("/" + _first_dataset(handle))
    _rehash(folder)
    _refused(load_bundle, folder, match="with its data inside it, got a SoftLink at")
    folder = Path(shutil.copytree(bundle_folder, tmp_path / "external"))
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(64, dtype=np.float32).tobytes())
    with h5py.File(folder / WEIGHTS_FILE, "r+") as handle:
        name = _first_dataset(handle)
        shape = handle[name].shape
        del handle[name]
        handle.create_dataset(name, shape=shape, dtype="f4", external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
    _rehash(folder)
    _refused(load_bundle, folder, match="got a dataset stored in other files at")


@pytest.mark.parametrize("shape", [(2**20, 2**20), (2**14, 2**14)], ids=["4-TiB", "1-GiB-under-keras-floor"])
def test_hdf5_weights_with_a_huge_declared_shape(bundle_folder: Path, tmp_path: Path, shape: tuple[int, int]) -> None:
    """A dataset declaring far more than it stores (chunked, compressed fill value) is refused unread, also below
    the 4 GiB floor of Keras's own per-dataset guard."""
    import h5py

    folder = _copy(bundle_folder, tmp_path)
    with h5py.File(folder / WEIGHTS_FILE, "r+") as handle:
        name = _first_dataset(handle)
        del handle[name]
        handle.create_dataset(name, shape=shape, dtype="f4", chunks=(64, 64), compression="gzip", fillvalue=1.0)
    assert (folder / WEIGHTS_FILE).stat().st_size < 1024**2
    _rehash(folder)
    message = _refused(load_bundle, folder, match=r"expected weights of at most \d+ bytes for this Functional")
    declared = int(message.split("got datasets declaring ")[1].split(" ")[0])
    assert declared > shape[0] * shape[1] * 4


def test_hdf5_weights_of_another_architecture(bundle_folder: Path, tmp_path: Path) -> None:
    folder = _copy(bundle_folder, tmp_path)
    config = _config(folder)
    config["hparams"]["filters"] = [8, 16]  # the stored weights hold 4-8 filters
    _write_config(folder, config)
    _refused(load_bundle, folder, match="expected weights that fit the 'unet3d' architecture")


def test_hparams_that_build_nothing(bundle_folder: Path, tmp_path: Path) -> None:
    folder = _copy(bundle_folder, tmp_path)
    config = _config(folder)
    config["hparams"]["no_such_argument"] = 1
    _write_config(folder, config)
    _refused(load_bundle, folder, match="expected hyper-parameters that build a 'unet3d' model")


# --------------------------------------------------------------------------- things that are not bundles
class _Payload:
    """Unpickling this creates ``marker`` (harmless stand-in for running an attacker's code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("name", ["model.pkl", "model.pt", "model.joblib", "weights.npy", "model", "model.bin"])
def test_a_pickle_offered_as_a_bundle_is_refused_unread(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(_Payload(marker)))
    message = _refused(read_bundle_config, path, match="expected a MedAnalysis bundle")
    assert "pickle" in message
    _refused(load_bundle, path, match="expected a MedAnalysis bundle")
    assert not marker.exists()


def test_a_keras_model_file_is_refused_unread(tmp_path: Path) -> None:
    """A .keras archive (config.json naming arbitrary callables) and a legacy .h5 model are never deserialised."""
    config = {"module": "os", "class_name": "system", "config": {"command": "touch owned"}, "registered_name": None}
    keras_file = tmp_path / "model.keras"
    with zipfile.ZipFile(keras_file, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
    _refused(load_bundle, keras_file, match="full Keras models are never loaded because they can carry code")
    legacy = tmp_path / "model.h5"
    legacy.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    _refused(load_bundle, legacy, match="got a Keras model file 'model.h5'")
    renamed = tmp_path / "model.zip"  # the same .keras archive under a bundle-like name: no bundle.json inside
    shutil.copyfile(keras_file, renamed)
    _refused(load_bundle, renamed, match=r"expected exactly one bundle.json at the top of the archive")
    assert not (Path.cwd() / "owned").exists()


def test_a_savedmodel_folder_is_refused_unread(tmp_path: Path) -> None:
    folder = tmp_path / "exported"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"\x08\x01\x12\x00")
    (folder / CONFIG_FILE).write_text("{}")  # even with a bundle.json beside it
    _refused(read_bundle_config, folder, match="got a TensorFlow SavedModel folder 'exported'")
    _refused(load_bundle, folder, match="SavedModels are never loaded because they can carry code")


# --------------------------------------------------------------------------------------------- archives
def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]], *, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return path


def _bundle_entries(folder: Path) -> list[tuple[zipfile.ZipInfo | str, bytes]]:
    return [(f"tiny/{p.name}", p.read_bytes()) for p in sorted(folder.iterdir())]


def test_a_zip_bundle_loads(bundle_folder: Path, tmp_path: Path) -> None:
    archive = _zip(tmp_path / "tiny.zip", _bundle_entries(bundle_folder))
    loaded = load_bundle(archive)
    assert loaded.config.name == "tiny" and loaded.directory.is_dir()
    loaded.cleanup()


def _link(name: str, target: str, kind: int) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (kind | 0o777) << 16
    return info, target.encode()


HOSTILE_MEMBERS = {
    "parent traversal": (("tiny/../../escaped.txt", b"x"), r"got 'tiny/\.\./\.\./escaped.txt' \(contains '\.\.'\)"),
    "absolute path": (("/tmp/escaped.txt", b"x"), r"got the absolute path '/tmp/escaped.txt'"),
    "drive letter": (("C:/escaped.txt", b"x"), "got the absolute path 'C:/escaped.txt'"),
    "backslash traversal": (("tiny\\..\\..\\escaped.txt", b"x"), "contains a backslash"),
    "symlink": (_link("tiny/link", "/etc/passwd", 0o120000), "got a link or special file 'tiny/link'"),
    "fifo": (_link("tiny/fifo", "", 0o010000), "got a link or special file 'tiny/fifo'"),
    "device": (_link("tiny/dev", "", 0o020000), "got a link or special file 'tiny/dev'"),
    "duplicate name": (("tiny/bundle.json", b"{}"), "expected unique archive entry names, got 'tiny/bundle.json' twice"),
    "name too long": (("tiny/" + "x" * 300, b"x"), "expected archive entry names of at most 1024 bytes"),
}


@pytest.mark.parametrize("member", sorted(HOSTILE_MEMBERS), ids=lambda name: name.replace(" ", "-"))
def test_archives_with_entries_that_could_escape(bundle_folder: Path, tmp_path: Path, member: str) -> None:
    entry, message = HOSTILE_MEMBERS[member]
    archive = _zip(tmp_path / "hostile.zip", [*_bundle_entries(bundle_folder), entry])
    _refused(load_bundle, archive, match=message, error=UnsafeArchiveError)
    _refused(safe_extract, archive, tmp_path / "out", match=message, error=UnsafeArchiveError)
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "escaped.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.zip"]  # no partial extraction left behind


def test_zip_bombs(tmp_path: Path) -> None:
    """High-ratio entries and headers that lie about sizes are refused; nothing is left on disk."""
    bomb = _zip(tmp_path / "bomb.zip", [("tiny/bundle.json", b"{}"), ("tiny/zeros.bin", bytes(64 * 1024**2))])
    assert bomb.stat().st_size < 200 * 1024
    _refused(safe_extract, bomb, tmp_path / "out", match="expected a compression ratio of at most 200, got ",
             error=UnsafeArchiveError)
    _refused(load_bundle, bomb, match="expected a compression ratio", error=UnsafeArchiveError)
    # A header claiming a tiny size: the ratio check believes it, decompression stops at the claimed size and the
    # CRC check refuses the entry.
    liar = tmp_path / "liar.zip"
    data = bytearray(_zip(tmp_path / "plain.zip", [("tiny/zeros.bin", bytes(2 * 1024**2))]).read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size: local, central
        at = data.find(signature)
        struct.pack_into("<I", data, at + offset, 10)
    liar.write_bytes(bytes(data))
    _refused(safe_extract, liar, tmp_path / "out", match="got a damaged one: Bad CRC-32 for file 'tiny/zeros.bin'",
             error=UnsafeArchiveError)
    many = _zip(tmp_path / "many.zip", [(f"tiny/{n}", b"") for n in range(300)], compression=zipfile.ZIP_STORED)
    _refused(safe_extract, many, tmp_path / "out", match="expected at most 256 archive entries, got 300",
             error=UnsafeArchiveError)
    assert not (tmp_path / "out").exists()


def test_damaged_zip_archives_found_by_fuzzing(bundle_folder: Path, tmp_path: Path) -> None:
    """Regression inputs: zipfile raised BadZipFile, zlib.error, OSError or an ENAMETOOLONG OSError out of the
    loader before these became UnsafeArchiveError."""
    good = _zip(tmp_path / "good.zip", _bundle_entries(bundle_folder)).read_bytes()
    damaged: dict[str, bytes] = {}
    data = bytearray(good)
    data[data.find(b"PK\x03\x04", 10)] = ord("Q")  # the second local header loses its signature
    damaged["bad local header"] = bytes(data)
    data = bytearray(good)
    start = data.find(b"tiny/bundle.json") + len("tiny/bundle.json")
    data[start + 20 : start + 60] = bytes(40)  # the deflate stream of bundle.json
    damaged["corrupt deflate stream"] = bytes(data)
    data = bytearray(good)
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 42, 0xFFFFFFF0)  # local header offset far past the end
    damaged["offset past the end"] = bytes(data)
    damaged["truncated"] = good[: len(good) // 2]
    damaged["not a zip"] = b"PK\x03\x04" + bytes(range(256)) * 4
    for name, payload in damaged.items():
        path = tmp_path / f"{name.replace(' ', '_')}.zip"
        path.write_bytes(payload)
        try:  # reads bundle.json alone: it may succeed when only the weights entry is damaged, or refuse cleanly
            read_bundle_config(path)
        except BundleError as error:
            assert "expected" in str(error), name
        with pytest.raises(BundleError, match="expected"):
            load_bundle(path)
        with pytest.raises(UnsafeArchiveError, match="expected"):
            safe_extract(path, tmp_path / f"out_{name.replace(' ', '_')}")
        assert not (tmp_path / f"out_{name.replace(' ', '_')}").exists()


def test_tar_archives_and_hardlinks_are_not_bundles(bundle_folder: Path, tmp_path: Path) -> None:
    """Tar archives (the only common format with hard links) are refused outright, never opened by tarfile."""
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle_folder, arcname="tiny")
        link = tarfile.TarInfo("tiny/hard")
        link.type = tarfile.LNKTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    _refused(read_bundle_config, archive, match=r"expected a MedAnalysis bundle folder, its bundle.json, or a .zip")
    _refused(load_bundle, archive, match=r"got a file 'tiny.tar.gz'")
    assert not (tmp_path / "tiny").exists() and not (tmp_path / "hard").exists()


def test_the_extraction_folder_must_be_new(bundle_folder: Path, tmp_path: Path) -> None:
    archive = _zip(tmp_path / "tiny.zip", _bundle_entries(bundle_folder))
    existing = tmp_path / "out"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="expected a new extraction folder"):
        safe_extract(archive, existing)
    assert (existing / "keep.txt").read_text() == "mine"


def test_deflate_helpers_still_read_what_python_writes(tmp_path: Path) -> None:
    """Entries written by ZipFile.writestr carry permission bits without a file type; they are regular files
    (this was refused as a 'special file' before the fuzzing harness found it)."""
    archive = _zip(tmp_path / "plain.zip", [("tiny/a.txt", b"hello"), ("tiny/b.txt", zlib.compress(b"x"))])
    with zipfile.ZipFile(archive) as opened:
        assert (opened.getinfo("tiny/a.txt").external_attr >> 16) == 0o600
    out = safe_extract(archive, tmp_path / "out")
    assert (out / "tiny" / "a.txt").read_bytes() == b"hello"
    assert io.BytesIO((out / "tiny" / "b.txt").read_bytes()).read() == zlib.compress(b"x")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
@pytest.mark.parametrize("name", ["model.zip", "ensemble.json", "bundle.zip.json", "model"])
def test_special_files_picked_as_bundles_are_refused_without_blocking(tmp_path, name):
    """A FIFO opened for reading waits for a writer forever: picked in the Slicer panel it would freeze Slicer."""
    import threading

    fifo = tmp_path / name
    os.mkfifo(fifo)
    outcome = []

    def read() -> None:
        try:
            read_bundle_config(fifo)
        except MedAnalysisError as error:
            outcome.append(str(error))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), f"reading the FIFO {name!r} as a bundle blocked"
    assert outcome and "expected" in outcome[0], outcome


def test_a_device_picked_as_a_bundle_is_refused():
    with pytest.raises(MedAnalysisError, match="special file"):
        read_bundle_config(os.devnull if os.name == "posix" else "NUL")
