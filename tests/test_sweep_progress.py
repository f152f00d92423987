"""The sweep's progress line and its time estimate."""
from __future__ import annotations

import pytest

from threestudio_dreambooth3d.sweep.progress import estimate_remaining


def test_progress_estimate():
    assert estimate_remaining([], 5, 2) is None
    assert estimate_remaining([10.0, 30.0], 4, 2) == pytest.approx(40.0)  # mean 20 s x 4 cells / 2 at a time
    # two of the four are running, for 5 s and for longer than the mean: (80 - 5 - 20) / 2
    assert estimate_remaining([10.0, 30.0], 4, 2, [5.0, 50.0]) == pytest.approx(27.5)
