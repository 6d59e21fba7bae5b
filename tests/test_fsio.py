"""fsio.write_atomic: old or new content, never a torn file, and a rename that is flushed to disk."""

from __future__ import annotations

import os
import stat

import pytest

from factscale import fsio

pytestmark = pytest.mark.unit  # pure functions: the seconds-long tier


def test_write_atomic_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    fsio.write_atomic(target, "new content")
    assert target.read_text() == "new content"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no .results.json.*.tmp left behind


def test_write_atomic_fsyncs_the_data_then_the_directory_after_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append((stat.S_ISDIR(os.fstat(fd).st_mode), target.exists() and target.read_text()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    fsio.write_atomic(target, "{}")
    # first the temporary file's data (target not there yet), then the directory, after the rename
    assert synced == [(False, False), (True, "{}")]


@pytest.mark.unit
def test_provenance_records_what_decides_the_cpu_kernels(monkeypatch):
    """Every result row carries the CPU model, torch's kernel level and any variable that overrides the kernel
    dispatch (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, ...): they move results between machines."""
    import torch  # noqa: F401  (versions() reports torch's dispatch only where torch is loaded)

    from factscale.provenance import versions

    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.delenv("MKL_CBWR", raising=False)
    v = versions()
    assert v["torch_cpu_capability"] and v["cpu"] and v["env_ATEN_CPU_CAPABILITY"] == "default"
    assert "env_MKL_CBWR" not in v
