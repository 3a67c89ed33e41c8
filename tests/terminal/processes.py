"""`pos-terminal` as a real process, and what a command did to the terminal's folder.

The reproductions of damaged files run the installed entry point in its own process, as a
tester would; `snapshot` records every file's bytes and modification time so a test can say
that a refused command changed nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import REPO
from tests.terminal.conftest import Run

COMMAND_TIMEOUT = 60.0
Snapshot = dict[str, tuple[bytes, int]]


def terminal_command() -> list[str]:
    """The installed `pos-terminal` beside this interpreter, else the same CLI through -m."""
    installed = shutil.which("pos-terminal", path=str(Path(sys.executable).parent))
    return [installed] if installed else [sys.executable, "-m", "terminal.cli"]


def pos_terminal(*argv: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = (),
                 cwd: Path | None = None) -> Run:
    """One `pos-terminal ARGV...` process (after `prefix`, e.g. an `unshare` wrapper)."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    environment.update(env or {})
    done = subprocess.run([*prefix, *terminal_command(), *argv], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT, env=environment, check=False,
                          stdin=subprocess.DEVNULL, cwd=cwd)
    return Run(done.returncode, done.stdout, done.stderr)


def snapshot(root: Path) -> Snapshot:
    """Every file under `root`: its bytes and mtime (a rewrite of the same bytes still shows)."""
    files: Snapshot = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            files[str(path.relative_to(root))] = (path.read_bytes(), path.stat().st_mtime_ns)
    return files


def assert_refused(run: Run, before: Snapshot, root: Path) -> None:
    """Exit 2, exactly one line on stderr, no traceback, and not one file changed."""
    assert run.code == 2, (run.code, run.out, run.err)
    assert "Traceback" not in run.err + run.out
    assert len(run.err.splitlines()) == 1, run.err
    assert snapshot(root) == before, "a refused command changed a file"
