"""Atomic outputs: a reader sees the old file or the complete new one, never a partial one."""

from __future__ import annotations

import os
import stat

import pytest

from MedAnalysisLib.io.atomic import atomic_directory, atomic_path, write_text_atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "label.nii.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("writer crashed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["label.nii.gz"]


def test_temporary_keeps_the_extension_writers_choose_formats_by(tmp_path):
    for name in ("a.nii.gz", "b.seg.nrrd", "c.mha"):
        with atomic_path(tmp_path / name) as temporary:
            assert temporary.name.endswith(name.split(".", 1)[1])
            assert temporary.parent == tmp_path
            temporary.write_text(name)
        assert (tmp_path / name).read_text() == name


def test_outputs_get_the_umask_permissions_not_private_ones(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "table.csv", "a,b\n")
        with atomic_directory(tmp_path / "bundle") as folder:
            (folder / "bundle.json").write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "table.csv").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == 0o755


def test_directory_replacement_is_whole(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target, replaceable=lambda _: True) as folder:  # the caller's earlier output
        (folder / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    with pytest.raises(ValueError), atomic_directory(target, replaceable=lambda _: True) as folder:
        (folder / "broken.txt").write_text("x")
        raise ValueError("stop")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
