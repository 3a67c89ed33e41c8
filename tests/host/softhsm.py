"""A SoftHSM2 token of a test's own: its own SOFTHSM2_CONF and token folder, made with the
distribution's softhsm2-util (scripts/_setup.sh installs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

MODULE_PATHS = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so", "/usr/local/lib/softhsm/libsofthsm2.so")
LABEL = "posemu-test"
PIN = "246810"
SO_PIN = "13579135"


@dataclass
class Token:
    module: str
    label: str
    conf: Path
    folder: Path  # SoftHSM2's token folder (directories.tokendir)

    def init_args(self) -> list[str]:
        return ["init", "--hsm", "pkcs11", "--module", self.module, "--token", self.label]

    def object_dir(self) -> Path:
        """The one token's folder of objects inside the token folder."""
        (found,) = [p for p in self.folder.iterdir() if p.is_dir()]
        return found


def module_path() -> str | None:
    return next((p for p in MODULE_PATHS if Path(p).exists()), None)


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Token]:
    module = module_path()
    if module is None or shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 is not installed (scripts/_setup.sh installs softhsm2)")
    folder = tmp_path / "tokens"
    folder.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {folder}\nobjectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    monkeypatch.setenv("POSEMU_HSM_PIN", PIN)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", LABEL, "--so-pin", SO_PIN,
                    "--pin", PIN], check=True, capture_output=True, timeout=30,
                   env=dict(os.environ))
    yield Token(module, LABEL, conf, folder)


def open_session(tok: Token) -> Any:
    """A session on the test's token from this process: C_Initialize again, since SoftHSM2
    reads SOFTHSM2_CONF there and an earlier test may have initialised it with its own."""
    import pkcs11

    lib = pkcs11.lib(tok.module)
    lib.reinitialize()
    return lib.get_token(token_label=tok.label).open(user_pin=PIN)
