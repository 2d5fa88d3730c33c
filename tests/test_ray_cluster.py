"""`--ray-address`: the simulation attaches to a Ray cluster that is already running (here a head
node this test starts on loopback) instead of starting its own, and leaves it running."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from fedkd.bench import procs
from fedkd.cli import simulate
from fedkd.config import Config

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_processes(temp_dir: str) -> list[int]:
    """The head's processes: every one whose command line names this head's own temp dir (gcs,
    raylet, monitors, workers), and their children."""
    found = set(procs.matching(temp_dir))
    for pid in list(found):
        found.update(procs.descendants(pid))
    return sorted(p for p in found if not procs._zombie(p))


def _stop(temp_dir: str) -> None:
    """Stop this head only, by the ids of its own processes (`ray stop` would stop every Ray
    cluster of this user on the machine, other people's runs too)."""
    pids = _cluster_processes(temp_dir)
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        pids = procs.wait_gone(pids, wait)
        if not pids:
            return


@contextlib.contextmanager
def ray_head():
    """A one-machine Ray head on 127.0.0.1 with 2 CPUs; yields its address; stopped afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="fedkd-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        subprocess.run(
            [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
             "--num-gpus", "0", "--include-dashboard", "false", "--temp-dir", temp_dir, "--disable-usage-stats"],
            check=True, env=env, capture_output=True, text=True, timeout=180,
        )
        yield f"127.0.0.1:{port}", temp_dir
    finally:
        _stop(temp_dir)


def test_simulation_runs_on_an_existing_ray_cluster_and_leaves_nothing_behind(tmp_path):
    cfg = Config(num_clients=3, rounds=2, local_epochs=2, digest_epochs=1, distill_epochs=10, num_public=100,
                 aggregation="plain", client_cpus=1.0, out=str(tmp_path))
    with ray_head() as (address, temp_dir):
        try:
            assert _cluster_processes(temp_dir), "the head node did not start"
            results = simulate(cfg.replace(ray_address=address, engine="ray"))
            assert results["status"] == "completed"
            assert [r["round"] for r in results["rounds"]] == [1, 2]
            assert results["rounds"][1]["contributors"] == 3
            assert results["final"]["student_accuracy"] > 0.3  # chance is 0.1 on digits
            # the run attached to this head: its raylet started the workers that ran the ClientApps
            assert list(Path(temp_dir).glob("session_*/logs/worker-*")), "no worker of this head ran"
            assert _cluster_processes(temp_dir)  # the run only disconnected: the head is still up
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
    try:  # stopped: no raylet, gcs_server or worker of that head is left
        assert _cluster_processes(temp_dir) == []
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
