"""Files are replaced whole or not at all (monai_cir.atomic): checkpoints, feature caches, results, DICOM."""

from __future__ import annotations

import os

import pytest
import torch

from monai_cir.atomic import atomic_path, atomic_write_text, torch_save_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="mid-write"):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_write_replaces_the_file_with_the_usual_permissions(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    atomic_write_text(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # readable by whoever could read a plain write


def test_torch_save_atomic_round_trip(tmp_path):
    target = tmp_path / "cache.pt"
    torch_save_atomic({"x": torch.arange(3)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["x"], torch.arange(3))


def test_the_apps_results_files_are_written_whole_with_the_usual_permissions(tmp_path):
    """results.json and problems.json go through the one atomic writer: readable by whoever reads the app's other outputs
    (a temporary file's 0600 made them unreadable to a PACS bridge running as another user)."""
    from monai.deploy.core import Fragment

    from deploy_app.operators.results_writer import PROBLEMS_FILE, RESULTS_FILE, ResultsWriterOperator

    ResultsWriterOperator(Fragment(), output_folder=tmp_path, name="results").write([], [])
    umask = os.umask(0)
    os.umask(umask)
    for name in (RESULTS_FILE, PROBLEMS_FILE):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([RESULTS_FILE, PROBLEMS_FILE])


def test_a_durable_write_is_on_the_disk_when_it_returns(tmp_path, monkeypatch):
    """Found by review: the DICOM service acknowledged a C-STORE (0x0000) before the instance was flushed to the disk;
    after a power loss an empty file or status record could stand behind the acknowledgment (the sender may have
    deleted its copy). A durable write flushes the file before its rename and the folder after."""
    import os

    from monai_cir.atomic import atomic_write_bytes

    flushed = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (flushed.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    atomic_write_bytes(tmp_path / "plain.bin", b"x")
    assert flushed == []
    atomic_write_bytes(tmp_path / "durable.bin", b"y", durable=True)
    assert len(flushed) == 2 and flushed[0].startswith(str(tmp_path / ".durable.bin.")) and flushed[1] == str(tmp_path)
    assert (tmp_path / "durable.bin").read_bytes() == b"y"
