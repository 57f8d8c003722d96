"""atomic_write: a failed write leaves nothing behind and never clobbers the previous file."""

import gzip

import numpy as np
import pytest

from mediclip_monai.io import atomic_write, write_anomaly_map


def test_success_renames_temp_onto_path(tmp_path):
    target = tmp_path / "sub" / "case_anomaly_map.nii.gz"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent  # same folder, so the rename is atomic
        assert tmp.name.startswith(".") and tmp.name.endswith(".nii.gz")
        assert tmp != target and not target.exists()
        tmp.write_bytes(b"data")
    assert target.read_bytes() == b"data"
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_exception_leaves_no_file_and_no_temp(tmp_path):
    target = tmp_path / "scores.csv"
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_file_survives_a_failed_write(tmp_path):
    target = tmp_path / "scores.csv"
    target.write_text("previous run")
    with pytest.raises(KeyboardInterrupt), atomic_write(target) as tmp:
        tmp.write_text("partial")
        raise KeyboardInterrupt
    assert target.read_text() == "previous run"
    assert list(tmp_path.iterdir()) == [target]


def test_writer_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    def open_half_then_fail(filename, mode="rb", compresslevel=9):
        with open(filename, "wb") as handle:
            handle.write(b"\x1f\x8b half a gzip")
        raise OSError("disk full")

    monkeypatch.setattr(gzip, "open", open_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_anomaly_map(tmp_path / "case" / "case_anomaly_map.nii.gz", np.zeros((4, 4), np.float32), np.eye(4))
    assert list((tmp_path / "case").iterdir()) == []
