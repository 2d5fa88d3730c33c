"""`fedkd deploy`: certificates and keys, usage errors, teardown, and real loopback deployments.

The end-to-end tests start real Flower processes on 127.0.0.1. Each has a hard time limit, and
whatever happens, every process it caused is found through an environment tag and killed, so a
failing test leaves nothing running. The default run keeps the plain 2-node round, the secure
refusal, Ctrl-C and a SuperNode dying mid-run (about 90 s on 2 cores); the full secure round and
the failing run are marked slow (`pytest -m slow tests/test_deploy.py`).

No test depends on how fast a loaded machine is: each waits for the event itself (a line, an exit,
a process count) and the bound it waits under (WAIT, or a deployment's own --timeout) is only
there so that a hang ends, several times what the event takes on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from fedkd import deploy
from fedkd.deploy import runconfig
from fedkd.errors import UsageError

LINUX_PROC = pytest.mark.skipif(not Path("/proc").is_dir(), reason="orphan checks read /proc")
# 2 SuperNodes sum in the clear: secure aggregation refuses sessions of fewer than 3 (secagg-min-clients)
TINY = 'rounds=1 local-epochs=1 distill-epochs=2 num-public=100 aggregation="plain"'
PLAIN = 'aggregation="plain"'
WAIT = 120.0  # seconds: the bound for an event that takes a few seconds on an idle machine
DEPLOY_TIMEOUT = "300"  # a test deployment's own --timeout (one round takes 40-50 s on 2 idle cores)
RUN_WAIT = 360.0  # ... and how long a test waits for that deployment to exit
TAG = "FEDKD_TEST_TAG"
PROJECT = Path(__file__).resolve().parent.parent  # the app to submit, whether or not fedkd is installed editable


# ---- helpers ------------------------------------------------------------------------------------

def parse(*argv: str) -> argparse.Namespace:
    return deploy.build_parser().parse_args(list(argv))


def kill_tagged(tag: str) -> set[int]:
    """SIGKILL every process carrying TAG=tag; returns the pids that were still alive."""
    pids = deploy.marked_pids(tag, name=TAG)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def wait_untagged(tag: str, within: float = WAIT) -> set[int]:
    end = time.monotonic() + within
    while (left := deploy.marked_pids(tag, name=TAG)) and time.monotonic() < end:
        time.sleep(0.2)
    return left


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine; a listener is not
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class DeployProcess:
    """`python -m fedkd.deploy ...` as a child, its lines collected by a thread, tagged so that
    `close()` can kill anything it left behind."""

    def __init__(self, args: list[str], cwd: Path):
        self.tag = uuid.uuid4().hex
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "fedkd.deploy", "--app", str(PROJECT), *args], cwd=cwd,
            env={**os.environ, TAG: self.tag},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.popen.stdout), daemon=True)
        self._reader.start()

    def wait_for(self, fragment: str, within: float) -> None:
        end = time.monotonic() + within
        while not any(fragment in line for line in self.lines):
            assert self.popen.poll() is None, "deploy exited early:\n" + self.text()
            assert time.monotonic() < end, f"no line with {fragment!r} within {within}s:\n" + self.text()
            time.sleep(0.2)

    def wait(self, within: float) -> int:
        try:
            code = self.popen.wait(within)
        except subprocess.TimeoutExpired:
            self.popen.send_signal(signal.SIGTERM)  # let it tear down, then make sure
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
            pytest.fail(f"deploy did not exit within {within}s:\n" + self.text())
        self._reader.join(5)
        return code

    def text(self) -> str:
        return "".join(self.lines)

    def ports(self, log: Path) -> list[int]:
        """The ports its processes were started on, from run.log (the console leaves command lines out)."""
        return [int(p) for p in re.findall(r"--port (\d+)", log.read_text())]

    def close(self) -> set[int]:
        if self.popen.poll() is None:
            self.popen.kill()
        return kill_tagged(self.tag)


@pytest.fixture
def run_deploy(tmp_path):
    started: list[DeployProcess] = []

    def start(*args: str) -> DeployProcess:
        proc = DeployProcess(list(args), tmp_path)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


# ---- certificates and keys ----------------------------------------------------------------------

def test_server_certificate_is_signed_by_the_ca_for_loopback_names(tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    files = deploy.write_tls_files(tmp_path / "certs")
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert files.server_key.stat().st_mode & 0o077 == 0  # private keys are readable by the owner only


def test_a_tls_client_trusting_the_ca_accepts_the_server_on_127_0_0_1(tmp_path):
    files = deploy.write_tls_files(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    client_ctx = ssl.create_default_context(cafile=str(files.ca_cert))  # hostname checks on
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve():
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.recv(2) == b"ok"
        thread.join(WAIT)


def test_certificates_are_reused_while_valid_and_renewed_once_expired(tmp_path):
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    first = deploy.write_tls_files(tmp_path, now=now, days=10)
    pem = first.server_cert.read_bytes()
    assert deploy.write_tls_files(tmp_path, now=now + datetime.timedelta(days=9)).server_cert.read_bytes() == pem
    renewed = deploy.write_tls_files(tmp_path, now=now + datetime.timedelta(days=11))
    assert renewed.server_cert.read_bytes() != pem


def test_node_keys_are_what_flower_reads_and_are_kept(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key

    keys = deploy.node_keys(tmp_path, 3)
    assert len({k.public.read_bytes() for k in keys}) == 3
    for key in keys:
        assert isinstance(load_ssh_private_key(key.private.read_bytes(), None), ec.EllipticCurvePrivateKey)
        assert try_load_public_key(key.public)  # what `flwr supernode register` accepts
    again = deploy.node_keys(tmp_path, 4)
    assert [k.public.read_bytes() for k in again[:3]] == [k.public.read_bytes() for k in keys]


# ---- small pieces -------------------------------------------------------------------------------

def test_free_ports_are_distinct_and_bindable():
    ports = deploy.free_ports(6)
    assert len(set(ports)) == 6
    assert all(port_is_free(p) for p in ports)


def test_run_config_gets_num_clients_and_an_absolute_out(tmp_path):
    config = deploy.build_run_config('rounds=2 out="runs/x"', 3, {"out": "runs/latest"}, tmp_path)
    assert config == {"rounds": 2, "num-clients": 3, "out": str(tmp_path / "runs" / "x")}
    assert deploy.build_run_config("", 3, {"out": "runs/latest"}, tmp_path)["out"] == str(tmp_path / "runs/latest")


def test_the_app_is_found_beside_the_package_or_else_in_the_current_folder(tmp_path, monkeypatch):
    assert deploy.find_app(None, tmp_path) == PROJECT  # this checkout (editable install or pythonpath)
    monkeypatch.setattr(runconfig, "__file__", str(tmp_path / "site-packages" / "fedkd" / "deploy" / "runconfig.py"))
    assert deploy.find_app(None, PROJECT) == PROJECT  # a regular install, run from the project
    with pytest.raises(UsageError, match="pass --app DIR"):
        deploy.find_app(None, tmp_path)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["1"], "N=1 is too small"),
        (["2", "--certs-dir", "c"], "--certs-dir is only used with --secure"),
        (["2", "--secure"], "--secure needs --certs-dir"),
        (["2", "--probe-unenrolled"], "--probe-unenrolled needs --secure"),
        (["2", "--timeout", "0"], "--timeout=0.0 must be > 0"),
        (["2", "--run-config", 'colour="red"'], "unknown setting 'colour'"),
        (["2", "--run-config", "rounds=0"], "rounds=0 is too small"),
        (["2", "--run-config", "num-clients=3"], "sets num-clients=3 but the deployment has 2 SuperNodes"),
        (["2"], "secure aggregation needs at least secagg-min-clients=3 clients"),
        (["2", "--run-config", "rounds=1 oops"], "is not 'key=value ...'"),
        (["2", "--run-config", "out=unquoted/path"], "is not 'key=value ...'"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert deploy.main(parse(*argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedkd deploy: error: ") and fragment in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing was written or started


def test_an_out_that_cannot_be_written_is_refused_before_anything_starts(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert deploy.main(parse("3", "--run-config", 'out="/proc/forbidden"')) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedkd deploy: error: out '/proc/forbidden' cannot be created or written") and \
        err.count("\n") == 1
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.json").write_text("{}")
    assert deploy.main(parse("3", "--run-config", 'out="done"')) == 2
    assert "already holds the results of an earlier run" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done"]  # no process, no FLWR_HOME, nothing else


def test_a_certs_dir_that_cannot_be_written_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert deploy.main(parse("3", "--secure", "--certs-dir", str(blocker / "certs"))) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fedkd deploy: error: certs dir '{blocker / 'certs'}' is not writable") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()  # refused before the output folder was made


def test_missing_flower_binaries_are_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert deploy.main(parse("3")) == 2
    err = capsys.readouterr().err
    assert "'flower-superlink' was not found" in err and err.count("\n") == 1


def test_python_dash_m_reports_usage_errors_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedkd.deploy", "1"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=WAIT)
    assert proc.returncode == 2
    assert proc.stderr.startswith("fedkd deploy: error: N=1") and "Traceback" not in proc.stderr


# ---- teardown without Flower --------------------------------------------------------------------

@LINUX_PROC
def test_teardown_kills_stubborn_processes_and_descendants_in_other_sessions(tmp_path):
    bins = {name: "/bin/true" for name in deploy.BINARIES}
    # grace: the bound on the polite process's exit after SIGTERM (it stops at once when scheduled);
    # the stubborn one ignores SIGTERM, so teardown waits all of it, then SIGKILLs
    dep = deploy.Deployment(tmp_path, bins, echo=None, grace=10)
    try:
        # ignores SIGTERM, and leaves a grandchild in a session of its own (as flower-superexec does)
        stubborn = dep.start("stubborn", ["sh", "-c", "trap '' TERM; setsid sleep 300 & sleep 300 & wait"])
        polite = dep.start("polite", ["sleep", "300"])
        end = time.monotonic() + WAIT  # four processes: two shells' children start when they are scheduled
        while len(deploy.marked_pids(dep.marker)) < 4 and time.monotonic() < end:
            time.sleep(0.05)
        assert len(deploy.marked_pids(dep.marker)) >= 4
        t0 = time.monotonic()
        dep.stop_all()
        assert time.monotonic() - t0 < 200  # it did not wait out the 300 s sleeps
        end = time.monotonic() + WAIT
        while deploy.marked_pids(dep.marker) and time.monotonic() < end:
            time.sleep(0.05)
        assert deploy.marked_pids(dep.marker) == set()
        assert polite.poll() == -signal.SIGTERM and stubborn.poll() == -signal.SIGKILL
    finally:
        for pid in deploy.marked_pids(dep.marker):
            os.kill(pid, signal.SIGKILL)


# ---- real deployments on loopback ---------------------------------------------------------------

@LINUX_PROC
def test_two_node_plain_deployment_completes_a_round_and_leaves_nothing_running(run_deploy, tmp_path):
    from fedkd.results import CHECKPOINT, RUN_FILES

    proc = run_deploy("2", "--timeout", DEPLOY_TIMEOUT, "--run-config", TINY)
    code = proc.wait(within=RUN_WAIT)
    assert code == 0, proc.text()
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink()  # the run went to a fresh runs/<date-time> folder
    out = latest.resolve()
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and len(results["rounds"]) == 1
    assert results["config"]["num-clients"] == 2 and results["config"]["out"] == str(out)
    assert results["config"]["environment"]["flwr"] and "student_to_ensemble" in results["rounds"][0]
    files = {p.name for p in out.iterdir()}
    assert set(RUN_FILES) - {CHECKPOINT} <= files  # fedkd run's files, summary.txt and run.log too
    assert CHECKPOINT not in files  # a finished run is not resumed
    log = (out / "run.log").read_text()  # every process's lines; the console showed fedkd's
    assert "superlink |" in log and "node-0" in log and "\x1b" not in log
    assert "fedkd round 1: student " in log and "summary (summary.txt)" in log
    console = proc.text().splitlines()
    assert not any(line.startswith(("superlink", "node-", "run ")) for line in console), proc.text()
    assert [line for line in console if line.startswith("round 1: student ")], proc.text()
    assert len(console) < 30, proc.text()  # the steps, the round, the summary table: not Flower's lines
    assert "fedkd deploy: completed 1 round on 2 SuperNodes" in proc.text()
    assert wait_untagged(proc.tag) == set(), "processes outlived the deployment"
    ports = proc.ports(out / "run.log")
    assert len(ports) == 3 and all(port_is_free(p) for p in ports)


def test_each_node_config_file_gives_its_node_an_identity_and_the_roster_as_flower_reads_it(tmp_path):
    import stat

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from flwr.common.config import parse_config_args

    from fedkd.apps.node import hosted_clients
    from fedkd.apps.secure import node_roster

    paths = deploy.write_node_configs(tmp_path / "node-config", 3)
    rosters = []
    for i, path in enumerate(paths):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a private key inside: its owner's alone
        node_config = parse_config_args([str(path)])  # what flower-supernode --node-config FILE reads
        assert hosted_clients(node_config, 3) == (i,)  # one client per SuperNode
        roster, identity = node_roster(node_config)
        own = Ed25519PrivateKey.from_private_bytes(identity).public_key().public_bytes_raw()
        assert roster[i] == own and sorted(roster) == [0, 1, 2]
        rosters.append(roster)
    assert rosters[0] == rosters[1] == rosters[2] and len(set(rosters[0].values())) == 3


@LINUX_PROC
def test_three_node_secure_aggregation_deployment_runs_in_roster_mode(run_deploy, tmp_path):
    out = tmp_path / "out"
    tiny_secure = TINY.replace(' aggregation="plain"', "")
    proc = run_deploy("3", "--quiet", "--timeout", DEPLOY_TIMEOUT, "--run-config", f'{tiny_secure} out="{out}"')
    assert proc.wait(within=RUN_WAIT) == 0, proc.text()
    assert "secure-aggregation roster: 3 node identities" in proc.text()
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and results["rounds"][0]["secagg"]["survivors"] == [0, 1, 2]
    assert wait_untagged(proc.tag) == set()


@LINUX_PROC
def test_secure_superlink_refuses_a_node_whose_key_was_not_enrolled(tmp_path):
    tls = deploy.write_tls_files(tmp_path / "certs")
    enrolled = deploy.node_keys(tmp_path / "certs" / "nodes", 2)
    stranger = deploy.write_node_key(deploy.NodeKey(tmp_path / "stranger.key", tmp_path / "stranger.pub"))
    dep = deploy.Deployment(tmp_path / "work", deploy.find_binaries(), tls, echo=None, cwd=tmp_path, grace=5)
    try:
        with dep:
            ports = deploy.free_ports(5)
            superlink = dep.start_superlink(ports[0], ready_within=WAIT)
            for key in enrolled:
                dep.enroll(key)
            nodes = [dep.start_supernode(f"node-{i}", f"partition-id={i} num-partitions=2", ports[1 + i], key)
                     for i, key in enumerate(enrolled)]
            intruder = dep.start_supernode("intruder", "partition-id=0 num-partitions=2", ports[3], stranger)
            keyless = dep.start_supernode("keyless", "partition-id=1 num-partitions=2", ports[4])  # self-registers
            dep.wait_nodes(2, nodes, within=WAIT)
            codes = {p.name: p.wait(timeout=WAIT) for p in (intruder, keyless)}
            assert dep.online_nodes() == 2  # only the enrolled nodes ever count for a run
            assert superlink.poll() is None and all(n.poll() is None for n in nodes)
    finally:
        for pid in deploy.marked_pids(dep.marker):
            os.kill(pid, signal.SIGKILL)
    for name, proc in (("intruder", intruder), ("keyless", keyless)):
        assert codes[name] != 0, proc.output()
        assert deploy.NODE_REFUSED in proc.output(), proc.output()
        assert "SuperNode ID" not in proc.output()  # never given a node id, so never sent a message
    assert "No SuperNode found with the given public key" in superlink.output()
    assert all("SuperNode ID" in n.output() for n in nodes)


@LINUX_PROC
def test_ctrl_c_during_a_run_stops_every_process_and_frees_the_ports(run_deploy, tmp_path):
    proc = run_deploy("2", "--quiet", "--timeout", DEPLOY_TIMEOUT, "--run-config", f'rounds=20 {PLAIN} out="{tmp_path / "out"}"')
    proc.wait_for("submitted", within=WAIT)
    time.sleep(3)  # into the run (interrupting earlier would be just as valid; this is not a deadline)
    proc.popen.send_signal(signal.SIGINT)
    assert proc.wait(within=WAIT) == 130
    assert proc.text().strip().endswith("fedkd deploy: interrupted; every process was stopped")
    assert wait_untagged(proc.tag) == set(), "processes outlived the deployment"
    assert all(port_is_free(p) for p in proc.ports(tmp_path / "out" / "run.log"))


@pytest.mark.slow
@LINUX_PROC
def test_secure_deployment_completes_a_round_with_an_unenrolled_probe_refused(run_deploy, tmp_path):
    out = tmp_path / "out"
    proc = run_deploy("2", "--quiet", "--secure", "--certs-dir", str(tmp_path / "certs"), "--probe-unenrolled",
                      "--timeout", DEPLOY_TIMEOUT, "--run-config", f'{TINY} out="{out}"')
    assert proc.wait(within=RUN_WAIT) == 0, proc.text()
    assert "refused as expected" in proc.text()
    assert json.loads((out / "results.json").read_text())["status"] == "completed"
    assert (tmp_path / "certs" / "ca.crt").is_file() and (tmp_path / "certs" / "nodes" / "node-1.key").is_file()
    assert wait_untagged(proc.tag) == set()


@pytest.mark.slow
@LINUX_PROC
def test_a_run_that_fails_exits_1_with_its_reason_in_one_line(run_deploy, tmp_path):
    out = tmp_path / "out"
    proc = run_deploy("2", "--quiet", "--timeout", DEPLOY_TIMEOUT,
                      "--run-config", f'rounds=1 {PLAIN} dataset="{tmp_path / "missing.npz"}" out="{out}"')
    assert proc.wait(within=RUN_WAIT) == 1, proc.text()
    last = proc.text().strip().splitlines()[-1]
    assert last.startswith("fedkd deploy: run failed: ") and "missing.npz" in last
    assert json.loads((out / "results.json").read_text())["status"] == "failed"
    assert wait_untagged(proc.tag) == set()


@LINUX_PROC
def test_a_supernode_dying_mid_run_fails_the_deployment_and_stops_the_rest(run_deploy, tmp_path):
    proc = run_deploy("2", "--quiet", "--timeout", DEPLOY_TIMEOUT, "--run-config", f'rounds=20 {PLAIN} out="{tmp_path / "out"}"')
    proc.wait_for("submitted", within=WAIT)
    victims = [pid for pid in deploy.marked_pids(proc.tag, name=TAG)
               if b"flower-supernode" in Path(f"/proc/{pid}/cmdline").read_bytes()
               and b"node-config/node-1.toml" in Path(f"/proc/{pid}/cmdline").read_bytes()]  # roster mode's file
    assert len(victims) == 1
    os.kill(victims[0], signal.SIGKILL)
    assert proc.wait(within=WAIT) == 1, proc.text()
    last = proc.text().strip().splitlines()[-1]
    assert last.startswith("fedkd deploy: run failed: node-1 exited with code -9 during run"), last
    assert wait_untagged(proc.tag) == set()


def test_a_second_deployment_with_the_default_out_gets_its_own_folder(tmp_path):
    """`runs/latest` stays `latest` through the path handling, so each deployment gets a new
    timestamped folder instead of being pointed at (and offered --force over) the previous run."""
    from fedkd.results import prepare_out

    folders = []
    for _ in range(2):
        out = deploy.build_run_config(PLAIN, 3, {"out": "runs/latest"}, tmp_path)["out"]
        assert out == str(tmp_path / "runs" / "latest")
        folder = prepare_out(out)
        (folder / "results.json").write_text("{}")  # the run's results
        folders.append(folder)
    assert folders[0] != folders[1] and all((f / "results.json").exists() for f in folders)
    assert (tmp_path / "runs" / "latest").resolve() == folders[1].resolve()
