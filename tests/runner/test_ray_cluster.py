"""A Ray cluster started the way docs/cluster.md says, on this machine: a head and two worker nodes (``ray start``,
one CPU each, loopback addresses only). A sweep file that registers its own normaliser runs on it with
``attnlab run FILE --backend ray --address HOST:PORT``, every run done; and when a worker node is killed while it
trains a run, Ray re-runs that run on the other nodes and the sweep still finishes with every run done.

Every node is a ``ray start --block`` process in a session of its own; the nodes are stopped by signalling their own
process groups (never ``ray stop``, which would stop every Ray on the machine). Nodes on one machine share the head's
session folder, where each writes its address, and a driver attaches to the node written last: the node this test
kills is the other worker node, as on a real cluster, where the driver runs beside the head.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from attnlab.runner.store import Store
from plugin_files import ATTNLAB, REPO, softmax1_sweep

RAY = str(Path(sys.executable).with_name("ray"))
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "200"}
UP = "This command will now block forever"  # what `ray start --block` prints once its node is up


def has_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = pytest.mark.skipif(not has_ray(), reason="ray is not installed (pip install 'attnlab[ray]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One ``ray start --block`` process and everything it started (its own process group)."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [RAY, "start", "--block", "--num-cpus", "1", "--disable-usage-stats", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=ENV,
                start_new_session=True,
            )

    def wait_up(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while UP not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"node not up in {timeout} s: {self.log.read_text()[-3000:]}"
            time.sleep(0.5)

    def pids(self) -> list[int]:
        """The processes of this node (its process group)."""
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid:  # the process group id
                out.append(int(stat.parent.name))
        return out

    def training(self) -> list[int]:
        """The node's Ray workers that are running a run (their process title names the task)."""
        found = []
        for pid in self.pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"execute_in_worker" in cmdline:
                found.append(pid)
        return found

    def stop(self, sig: int = signal.SIGTERM) -> None:
        for s in (sig, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, s)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=20)
                deadline = time.monotonic() + 20
                while self.pids() and time.monotonic() < deadline:
                    time.sleep(0.2)
                if not self.pids():
                    return
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, list[Node]]]:
    """(address, [head, node A, node B]); the driver attaches to node B (started last)."""
    temp = Path(tempfile.mkdtemp(prefix="rayt", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    port = free_port()
    address = f"127.0.0.1:{port}"
    head_args = ["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--include-dashboard", "false"]
    nodes: list[Node] = []
    try:
        nodes.append(Node([*head_args, "--temp-dir", str(temp)], temp / "head.log"))
        nodes[0].wait_up()
        for i, ip in enumerate(("127.0.0.2", "127.0.0.3")):
            nodes.append(Node(["--address", address, "--node-ip-address", ip], temp / f"node{i}.log"))
            nodes[-1].wait_up()
        yield address, nodes
    finally:
        for node in reversed(nodes):
            node.stop()
        subprocess.run(["rm", "-rf", str(temp)], check=False)


def run_statuses(db: Path) -> list[tuple[str, str, int]]:
    with Store(db) as store:
        return sorted((r["mechanism"], r["status"], r["pid"] or 0) for r in store.runs())


def test_a_sweep_file_with_its_own_normaliser_runs_on_the_cluster(cluster, tmp_path: Path) -> None:
    address, _ = cluster
    sweep = softmax1_sweep(tmp_path)
    db = tmp_path / "results.sqlite"
    cmd = [ATTNLAB, "run", str(sweep), "--db", str(db), "--backend", "ray", "--address", address]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV, cwd=REPO, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = run_statuses(db)
    assert [(m, s) for m, s, _ in runs] == [("softmax", "done")] * 2 + [("softmax1", "done")] * 2, result.stdout
    with Store(db) as store:
        plugins = {
            json.dumps(json.loads(r["config"]).get("plugins")) for r in store.runs() if r["mechanism"] != "softmax"
        }
    assert plugins == {json.dumps({"normaliser:softmax1": str(sweep.resolve())})}


def test_a_worker_node_killed_mid_run_loses_no_run(cluster, tmp_path: Path) -> None:
    address, nodes = cluster
    node_a = nodes[1]
    sweep = softmax1_sweep(tmp_path, steps=1500)  # runs of several seconds: one is under way when the node dies
    db = tmp_path / "results.sqlite"
    cmd = [ATTNLAB, "run", str(sweep), "--db", str(db), "--backend", "ray", "--address", address]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not (victims := node_a.training()):
            assert driver.poll() is None and time.monotonic() < deadline, "node A never trained a run"
            time.sleep(0.2)
        node_a.stop(signal.SIGKILL)  # the node dies: its raylet, its workers, the run it was training
        output, _ = driver.communicate(timeout=150)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, output
    runs = run_statuses(db)
    assert [s for _, s, _ in runs] == ["done"] * 4, output
    assert not set(victims) & {pid for _, _, pid in runs}, "a run is recorded as trained by a killed worker"
    assert "4 done, 0 failed" in output
