"""The shipped Locust user class, distributed: one master and two worker processes, headless,
against a real pos-host on 127.0.0.1; Locust's own JSON stats must show the transactions by
type and no failure."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from tests.fleet.support import fleet_json, tool
from tests.support import REPO, _env, init_host, running_host

LOCUSTFILE = str(REPO / "terminal" / "fleet" / "locustfile.py")
TERMINALS = 4
RUN = "3s"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_locust_master_and_two_workers(tmp_path: Path) -> None:
    data = init_host(tmp_path / "host")
    fleet = tmp_path / "fleet"
    fleet_json("provision", "--host-data", str(data), "--count", str(TERMINALS), "--out",
               str(fleet), "--cards", "1")
    port = str(free_port())
    locust = tool("locust", "locust")
    common = ["-f", LOCUSTFILE, "--fleet", str(fleet), "--fleet-slices", "2",
              "--fleet-mix", "purchase=80,echo=20"]
    with running_host(data) as host:
        workers = [subprocess.Popen([*locust, *common, "--worker", "--master-host", "127.0.0.1",
                                     "--master-port", port], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True, env=_env())
                   for _ in range(2)]
        try:
            master = subprocess.run(
                [*locust, *common, "--master", "--master-bind-host", "127.0.0.1",
                 "--master-bind-port", port, "--headless", "-u", str(TERMINALS), "-r",
                 str(TERMINALS), "-t", RUN, "--expect-workers", "2",
                 "--expect-workers-max-wait", "30", "--host", f"tcp://{host.endpoint}",
                 "--json", "--skip-log"],
                capture_output=True, text=True, timeout=90, env=_env(), check=False)
            for worker in workers:
                worker.wait(30)
        finally:
            for worker in workers:
                worker.kill()
                worker.communicate()
        log = host.log_lines()
    assert master.returncode == 0, master.stderr
    stats = {(s["method"], s["name"]): s for s in json.loads(master.stdout)}
    assert set(stats) == {("0800", "signon"), ("0200", "purchase"), ("0820", "echo")}
    assert stats["0800", "signon"]["num_requests"] == TERMINALS
    assert all(s["num_failures"] == 0 for s in stats.values())
    purchases = stats["0200", "purchase"]["num_requests"]
    assert purchases > 0 and stats["0820", "echo"]["num_requests"] > 0
    # the host saw what Locust counted (give or take the one exchange each user may have had
    # under way when the run stopped), one terminal per user, none shared between workers
    seen = sum(1 for line in log if line.get("mti") == "0200")
    assert purchases <= seen <= purchases + TERMINALS
    signed_on = [line["tid"] for line in log if line.get("mti") == "0800"]
    assert sorted(signed_on) == [f"F{i:07d}" for i in range(1, TERMINALS + 1)]
