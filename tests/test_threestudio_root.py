"""Finding threestudio: --threestudio, $THREESTUDIO_ROOT, the installed package, and the fix when none works."""
from __future__ import annotations

import pytest

from threestudio_dreambooth3d.environment.threestudio_root import locate_threestudio
from threestudio_dreambooth3d.errors import ThreestudioNotFoundError


def test_threestudio_not_found_says_how_to_point_at_it(tmp_path, monkeypatch):
    monkeypatch.delenv("THREESTUDIO_ROOT", raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(ThreestudioNotFoundError, match="threestudio not found.*--threestudio PATH.*THREESTUDIO_ROOT"):
        locate_threestudio()
    with pytest.raises(ThreestudioNotFoundError, match=r"--threestudio=.* is not a threestudio checkout"):
        locate_threestudio(tmp_path)
    monkeypatch.setenv("THREESTUDIO_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(ThreestudioNotFoundError, match="THREESTUDIO_ROOT=.*nowhere is not"):
        locate_threestudio()
