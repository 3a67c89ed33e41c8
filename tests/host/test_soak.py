"""Memory that plateaus (issue 10, 6): scripts/soak at reduced counts, a real host process.

The full soak (`scripts/soak`: 300,000 broken frames and 100,000 purchases, within 10 MB of
the level after warm-up) takes minutes; this one keeps the shape. Before the fix the host grew
about 160 B per approved purchase (a set of every STAN) and 30-55 B per broken frame (a
256 KiB read buffer per read, shrunk in place, fragmenting the heap): about 5 MB over the
rounds after the warm-up here, against a limit of 2.5 MB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_rss_plateaus_under_broken_frames_and_purchases() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "soak.py"), "--json", "--broken", "40000",
         "--purchases", "40000", "--rounds", "8", "--warmup", "3", "--limit-mb", "2.5"],
        capture_output=True, text=True, timeout=400, check=False, cwd=REPO)
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["approved"] == 40000 and result["resets"] == 0, result
    assert result["broken_answered"] == result["broken_answers_expected"], result
    assert result["tracebacks"] == 0 and result["host_exit"] == 0, result
    assert result["growth_mb"] <= 2.5, result
    assert done.returncode == 0, result
