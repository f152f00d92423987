"""The run's manifest: round trip, atomic writes, unreadable and disk-full errors, the subject hash."""
from __future__ import annotations

import errno
import json

import pytest

from threestudio_dreambooth3d.errors import DiskFullError
from threestudio_dreambooth3d.fs import sha256_files
from threestudio_dreambooth3d.pipeline import manifest as mf


def test_manifest_round_trip_and_atomic_write(tmp_path):
    m = mf.Manifest(tmp_path)
    m.start("stage1", {"command": ["a"], "upstream": {}})
    assert json.loads((tmp_path / "manifest.json").read_text())["steps"]["stage1"]["status"] == "running"
    m.finish("stage1", {"checkpoint": "stage1/run/ckpts/last.ckpt"}, ["cd x && python launch.py"], 1.5)
    again = mf.Manifest(tmp_path)
    rec = again.get("stage1")
    assert rec.status == "done" and rec.outputs == {"checkpoint": "stage1/run/ckpts/last.ckpt"}
    assert rec.fingerprint == mf.fingerprint({"command": ["a"], "upstream": {}}) and rec.output_id
    assert sorted(p.name for p in tmp_path.iterdir()) == [mf.BACKUP_FILE, "manifest.json"]  # no temporary files left


def test_unreadable_manifest_names_the_file_and_what_survives(tmp_path):
    (tmp_path / "manifest.json").write_text("{ truncated")
    (tmp_path / "finetune" / "checkpoints" / "partial").mkdir(parents=True)
    with pytest.raises(ValueError, match="manifest.json is not a readable manifest.*still holds finetune/checkpoints/partial"):
        mf.Manifest(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "empty", "not an object"])
def test_a_damaged_manifest_is_rebuilt_from_its_copy(tmp_path, damage):
    m = mf.Manifest(tmp_path)
    m.start("finetune", {"command": ["a"], "upstream": {}})
    m.finish("finetune", {"partial": "finetune/checkpoints/partial"}, [], 1.0, {"partial": "abc"})
    text = (tmp_path / "manifest.json").read_text()
    (tmp_path / "manifest.json").write_text({"truncated": text[: len(text) // 2], "empty": "", "not an object": "[]"}[damage])
    rec = mf.Manifest(tmp_path).get("finetune")
    assert rec.status == "done" and rec.checks == {"partial": "abc"} and rec.output_id == m.get("finetune").output_id


def test_a_record_missing_a_field_is_dropped_not_a_type_error(tmp_path):
    m = mf.Manifest(tmp_path)
    for name in ("finetune", "stage1"):
        m.start(name, {"command": [name], "upstream": {}})
        m.finish(name, {}, [], 1.0)
    data = json.loads((tmp_path / "manifest.json").read_text())
    del data["steps"]["stage1"]["fingerprint"]
    del data["steps"]["finetune"]["checks"]  # optional (older manifests lack it): defaults
    data["steps"]["finetune"]["added_later"] = 1  # unknown fields are ignored
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    again = mf.Manifest(tmp_path)
    assert again.get("stage1") is None  # redone
    assert again.get("finetune").status == "done" and again.get("finetune").checks == {}


def test_disk_full_while_saving_the_manifest_is_reported(tmp_path, monkeypatch):
    m = mf.Manifest(tmp_path)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    from threestudio_dreambooth3d import fs

    monkeypatch.setattr(fs.os, "replace", full)  # the manifest saves through fs's one atomic write
    with pytest.raises(DiskFullError, match="No space left on the disk while writing .*manifest.json"):
        m.start("finetune", {})
    assert not list(tmp_path.glob(".manifest.json.tmp*"))


def test_subject_hash_sees_bytes_and_names(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"1")
    b.write_bytes(b"1")
    assert sha256_files([a]) != sha256_files([b])  # renamed photo
    before = sha256_files([a])
    a.write_bytes(b"2")
    assert sha256_files([a]) != before
