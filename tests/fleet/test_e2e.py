"""pos-fleet against a real pos-host process on 127.0.0.1: provisioned through pos-host's CLI,
run open and closed loop, with a sign-on storm, through a key rotation, and imported."""

from __future__ import annotations

import json
import os
import stat
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fleet.support import fleet_json, pos_fleet, start_fleet
from tests.support import RunningHost, init_host, pos_host, provision_terminal, running_host

TERMINALS = 3


@dataclass
class Site:
    data: Path
    fleet: Path
    host: RunningHost

    @property
    def url(self) -> str:
        return f"tcp://{self.host.endpoint}"

    def purchases_logged(self) -> int:
        return sum(1 for line in self.host.log_lines() if line.get("mti") == "0200")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("fleet")
    data = init_host(root / "host")
    made = fleet_json("provision", "--host-data", str(data), "--count", str(TERMINALS),
                      "--out", str(root / "fleet"), "--cards", "2", "--prefix", "FL")
    assert made["terminals"] == TERMINALS and made["first"] == "FL000001"
    with running_host(data) as host:
        yield Site(data, root / "fleet", host)


def test_provision_writes_secrets_only_its_owner_reads(site: Site) -> None:
    files = [site.fleet / "cards.json", *sorted((site.fleet / "terminals").iterdir())]
    assert len(files) == TERMINALS + 1
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert [t["tid"] for t in pos_host(site.data, "terminal", "list")] == \
        ["FL000001", "FL000002", "FL000003"]
    assert len(pos_host(site.data, "card", "list")) == 2
    again = pos_fleet("provision", "--host-data", str(site.data), "--count", "1",
                      "--out", str(site.fleet), check=False)
    assert again.returncode == 1 and "already holds a fleet" in again.stderr


def test_open_loop_run_reports_every_answer(site: Site, tmp_path: Path) -> None:
    report_path, plot_path = tmp_path / "r.json", tmp_path / "r.svg"
    done = pos_fleet("run", "--fleet", str(site.fleet), "--host", site.url, "--rate", "100",
                     "--duration", "2", "--report", str(report_path), "--plot", str(plot_path),
                     "--seed", "1")
    assert "achieved rate" in done.stdout and "lost / mismatched  0 / 0" in done.stdout
    report = json.loads(report_path.read_text())
    assert report["mode"] == "open" and report["sent"] == 200 == report["answered"]
    assert report["codes"] == {"00": 200} and report["lost"] == 0 == report["mismatched"]
    assert report["signon"]["ok"] == TERMINALS == report["connected"]
    assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["p999_ms"]
    assert report["achieved_rate"] > 0
    svg = ET.parse(plot_path).getroot()
    points = {p.get("id"): p.get("points", "").split()
              for p in svg.iter("{http://www.w3.org/2000/svg}polyline")}
    assert len(points["rate"]) == len(report["timeline"]) >= 2
    shown = done.stdout + report_path.read_text()
    for card in json.loads((site.fleet / "cards.json").read_text()):
        assert card["pan"] not in shown  # PANs never reported


def test_closed_loop_storm_over_two_workers(site: Site) -> None:
    report = fleet_json("run", "--fleet", str(site.fleet), "--host", site.url, "--concurrency",
                        "4", "--duration", "1.5", "--workers", "2", "--signon-storm",
                        "--mix", "purchase=80,echo=20")
    assert report["mode"] == "closed" and report["workers"] == 2
    assert report["signon"]["storm"] is True
    assert report["signon"]["ok"] == TERMINALS == report["signon"]["answered"]
    assert set(report["by_type"]) == {"purchase", "echo"}
    assert report["codes"] == {"00": report["answered"]} and report["answered"] > 0
    assert report["lost"] == 0 == report["mismatched"] == report["timeouts"]


def test_a_missed_rotation_is_answered_k2_and_signed_on_again(site: Site) -> None:
    before = site.purchases_logged()
    run = start_fleet("run", "--fleet", str(site.fleet), "--host", site.url, "--rate", "60",
                      "--duration", "3", "--terminals", "1")
    try:
        deadline = time.monotonic() + 20
        while site.purchases_logged() <= before + 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        pos_host(site.data, "keys", "rotate", "FL000001")
        out, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 0, err
    report = json.loads(out)
    assert report["reasons"] == {"K2 MAK missed rotation": report["codes"]["14"]}
    assert report["auto_signons"] >= 1
    # every 14 was retried after the sign-on: one more answer than requests scheduled
    assert report["codes"]["00"] == report["sent"] - report["codes"]["14"]
    assert report["lost"] == 0 == report["mismatched"]


def test_inquiry_and_void_are_refused_until_the_host_serves_them(site: Site) -> None:
    before = site.purchases_logged()
    done = pos_fleet("run", "--fleet", str(site.fleet), "--host", site.url, "--rate", "10",
                     "--duration", "1", "--mix", "purchase=90,inquiry=5,void=5", check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "pos-fleet: --mix: balance inquiry (inquiry) is not served by pos-host yet; "
        "the fleet sends purchase, echo"]
    assert site.purchases_logged() == before


def test_import_a_fleet_from_injection_files(site: Site, tmp_path: Path) -> None:
    """What a tester does for another host: its own injection files and card list."""
    files = []
    for tid in ("IMP00001", "IMP00002"):
        provision_terminal(site.data, tid, "M00000000000009", out=tmp_path / f"{tid}.json")
        files.append(str(tmp_path / f"{tid}.json"))
    cards = json.loads((site.fleet / "cards.json").read_text())
    (tmp_path / "cards.json").write_text(json.dumps(cards[:1]))
    made = fleet_json("import", "--out", str(tmp_path / "fleet"), "--injection", *files,
                      "--cards", str(tmp_path / "cards.json"))
    assert made == {"fleet": str(tmp_path / "fleet"), "terminals": 2, "cards": 1}
    tmk = json.loads(Path(files[0]).read_text())["key"]
    report = fleet_json("run", "--fleet", str(tmp_path / "fleet"), "--host", site.url,
                        "--concurrency", "2", "--duration", "1")
    assert report["signon"]["ok"] == 2 and report["codes"] == {"00": report["answered"]}
    assert tmk not in json.dumps(report)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    refused = pos_fleet("import", "--out", str(tmp_path / "f2"), "--injection", str(bad),
                        "--cards", str(tmp_path / "cards.json"), check=False)
    assert refused.returncode == 1 and "holds no TMK" in refused.stderr
    assert not (tmp_path / "f2").exists()
