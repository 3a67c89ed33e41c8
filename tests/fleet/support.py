"""Running `pos-fleet` and `locust` as processes, the way a tester does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import _env

RUN_TIMEOUT = 60.0


def tool(name: str, module: str) -> list[str]:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", module]


def pos_fleet(*args: str, check: bool = True,
              timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*tool("pos-fleet", "terminal.fleet.cli"), *args], capture_output=True,
                          text=True, timeout=timeout, env=_env(), check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"pos-fleet {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done


def fleet_json(*args: str) -> Any:
    return json.loads(pos_fleet(*args, "--json").stdout)


def start_fleet(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*tool("pos-fleet", "terminal.fleet.cli"), *args, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
