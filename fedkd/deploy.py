"""`fedkd deploy N`: the fedkd Flower app on one SuperLink and N SuperNodes, each its own process on
127.0.0.1 (Flower's Deployment Engine, no Ray), submitted with `flwr run` and torn down at the end.

Owns: TLS material and SuperNode keys for secure mode (made here with `cryptography`), free ports,
a private FLWR_HOME holding the `flwr` connection to the SuperLink, starting and stopping every
process, streaming their logs with a name prefix (to the console unless --quiet, and always to
`run.log` in the run's output folder, chosen before anything starts), and judging whether the
run completed.
Must not touch: the app itself (`fedkd.apps` only runs inside the processes started here), the
user's ~/.flwr, or any fixed port.

Process tree, and how teardown finds all of it:

    flower-superlink --port P0     serves the Fleet, Control and Runtime APIs over HTTP(S) on P0
      flower-superexec               started by the SuperLink (its own session) ...
        flwr-serverapp                 ... which starts the ServerApp of each run
    flower-supernode --port Pi     one per partition i; its Runtime API on Pi
      flower-superexec
        flwr-clientapp               one per message
    flwr run / flwr log --stream   the run's submission and its log stream

Every process is started in a new session (so Ctrl-C reaches only this program, which then stops
them in order) with FEDKD_DEPLOY_ID=<random> in its environment, which all its descendants inherit.
Teardown sends SIGTERM to each process group, waits a grace period, then SIGKILLs the groups and
every process still carrying the marker (found through /proc on Linux), so nothing outlives it.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from fedkd.errors import UsageError, require_clients

CONNECTION = "fedkd-deploy"  # the SuperLink connection's name in the private FLWR_HOME/config.toml
MARKER = "FEDKD_DEPLOY_ID"  # environment variable inherited by every process a deployment starts
BINARIES = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr")
FINISHED = "finished:"  # prefix of a run's final status in `flwr ls`: completed, failed or stopped
ANSI = re.compile(r"\x1b\[[0-9;]*m")
NODE_REFUSED = "Failed to initialize the connection to the SuperLink"  # flower-supernode's exit message


class DeployError(Exception):
    """The deployment or its run failed (exit code 1); the message is one line."""


# ---- TLS certificates and SuperNode keys --------------------------------------------------------

@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path  # given to SuperNodes and to `flwr` as root certificate
    server_cert: Path  # the SuperLink's certificate for 127.0.0.1 and localhost, signed by the CA
    server_key: Path


@dataclass(frozen=True)
class NodeKey:
    private: Path  # OpenSSH EC private key, for `flower-supernode --auth-supernode-private-key`
    public: Path  # OpenSSH public key, enrolled with `flwr supernode register`


def write_tls_files(folder: Path, now: datetime.datetime | None = None, days: int = 365) -> TlsFiles:
    """Make a CA and a server certificate for 127.0.0.1/localhost signed by it, in `folder`.

    Existing files are kept when the server certificate is still valid at `now`, so a folder can be
    reused across deployments; otherwise all four files are written afresh.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = now or datetime.datetime.now(datetime.timezone.utc)
    files = TlsFiles(folder / "ca.crt", folder / "server.crt", folder / "server.key")
    if _tls_files_valid(files, now):
        return files

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedkd local deployment"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
                .not_valid_after(now + datetime.timedelta(days=days))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (builder(name("fedkd local CA"), name("fedkd local CA"), ca_key.public_key())
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    server_cert = (builder(name("127.0.0.1"), ca_cert.subject, server_key.public_key())
                   .add_extension(x509.SubjectAlternativeName([
                       x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False, key_agreement=True,
                                                key_cert_sign=False, crl_sign=False, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
                   .sign(ca_key, hashes.SHA256()))

    folder.mkdir(parents=True, exist_ok=True)
    _write_private(folder / "ca.key", _pem_private_key(ca_key))  # kept so the CA can sign again later
    _write_private(files.server_key, _pem_private_key(server_key))
    from cryptography.hazmat.primitives.serialization import Encoding

    files.ca_cert.write_bytes(ca_cert.public_bytes(Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(Encoding.PEM))
    return files


def _tls_files_valid(files: TlsFiles, now: datetime.datetime) -> bool:
    from cryptography import x509

    if not all(p.is_file() for p in (files.ca_cert, files.server_cert, files.server_key)):
        return False
    try:
        ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        server.verify_directly_issued_by(ca)
    except (ValueError, TypeError, OSError):
        return False
    return all(c.not_valid_before_utc <= now < c.not_valid_after_utc for c in (ca, server))


def node_keys(folder: Path, count: int) -> list[NodeKey]:
    """`count` SuperNode key pairs in `folder` (node-<i>.key / node-<i>.pub); missing ones are made."""
    keys = []
    for i in range(count):
        key = NodeKey(folder / f"node-{i}.key", folder / f"node-{i}.pub")
        if not (key.private.is_file() and key.public.is_file()):
            write_node_key(key)
        keys.append(key)
    return keys


def write_node_key(key: NodeKey) -> NodeKey:
    """A fresh EC P-384 key pair in OpenSSH format (what flower-supernode and `flwr supernode register` read)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption, PrivateFormat,
                                                              PublicFormat)

    private = ec.generate_private_key(ec.SECP384R1())
    key.private.parent.mkdir(parents=True, exist_ok=True)
    _write_private(key.private, private.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    key.public.write_bytes(private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH) + b"\n")
    return key


def _pem_private_key(key) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def check_writable(folder: Path) -> None:
    """Raise UsageError (one line) unless `folder` exists or can be made, and takes files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UsageError(f"certs dir '{folder}' is not writable: {exc.strerror or exc}") from None


# ---- ports, binaries, run config ----------------------------------------------------------------

def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports the OS reports free right now (all sockets held until all are chosen)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def find_binaries() -> dict[str, str]:
    """Paths of the Flower commands, preferring the ones beside this Python (its virtual environment)."""
    here = Path(sys.executable).parent
    found = {}
    for name in BINARIES:
        path = here / name if (here / name).is_file() else shutil.which(name)
        if path is None:
            raise UsageError(f"'{name}' was not found beside {sys.executable} nor on PATH; "
                             "install Flower 1.41 in this environment (pip install 'flwr>=1.41,<1.42')")
        found[name] = str(path)
    return found


def find_app(app: str | None, cwd: Path) -> Path:
    """The fedkd project folder to submit as the Flower app: `app` (another checkout); else the one
    this module belongs to (an editable install); else `cwd` (a regular install, run from the
    project). Its run settings are checked against `fedkd.config.Config`."""
    if app:
        candidates = [Path(app).expanduser().resolve()]
    else:
        candidates = [Path(__file__).resolve().parent.parent, cwd.resolve()]
    for folder in candidates:
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "[tool.flwr.app" in pyproject.read_text(encoding="utf-8"):
            return folder
    where = f"'{candidates[0]}'" if app else f"beside the fedkd package nor in '{cwd}'"
    raise UsageError(f"no Flower app (a pyproject.toml with [tool.flwr.app]) {where}; pass --app DIR")


def app_defaults(app_dir: Path) -> dict[str, Any]:
    import tomli

    with open(app_dir / "pyproject.toml", "rb") as f:
        return tomli.load(f).get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})


def build_run_config(text: str, num_nodes: int, defaults: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """The overrides to submit: the user's `k=v ...`, `num-clients` set to the number of SuperNodes,
    and `out` made absolute (against `cwd`) so the results land where the user expects."""
    from flwr.common.config import parse_config_args

    from fedkd.config import Config, ConfigError

    bad = UsageError(f"--run-config {text!r} is not 'key=value ...' with TOML values "
                     "(quote strings: out=\"runs/x\")")
    try:
        if any("=" not in token for token in shlex.split(text)):
            raise bad  # flwr's parser skips such a token silently
        given = parse_config_args([text]) if text.strip() else {}
    except UsageError:
        raise
    except Exception:  # shlex's ValueError, or flwr's parser (a click.ClickException for bad TOML)
        raise bad from None
    if "num-clients" in given and given["num-clients"] != num_nodes:
        raise UsageError(f"--run-config sets num-clients={given['num-clients']} but the deployment has "
                         f"{num_nodes} SuperNodes; leave num-clients out (it is set to N)")
    overrides = {**given, "num-clients": num_nodes}
    # absolute, but not resolved: a `latest` symlink must stay `latest` (results.prepare_out gives it a new folder)
    overrides["out"] = os.path.abspath(cwd / str(overrides.get("out", defaults.get("out", Config().out))))
    try:
        Config.from_run_config({**defaults, **overrides})
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return overrides


# ---- processes ----------------------------------------------------------------------------------

class Process:
    """One child process in its own session; a thread copies its output, prefixed with its name, to
    `echo` and keeps the last lines for error messages."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path,
                 echo: Callable[[str], None] | None):
        self.name = name
        self.argv = argv
        self.tail: deque[str] = deque(maxlen=400)
        self.popen = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, text=True, errors="replace", bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, args=(echo,), name=f"log-{name}", daemon=True)
        self._reader.start()

    def _read(self, echo: Callable[[str], None] | None) -> None:
        for raw in self.popen.stdout:
            line = ANSI.sub("", raw.rstrip("\n"))
            if "[uvicorn.access]" in line:  # one line per HTTP request: noise, and it would flood the tail
                continue
            self.tail.append(line)
            if echo is not None:
                echo(f"{self.name:<10}| {line}")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float) -> int:
        """Exit code, once the process has exited and its output has been read."""
        code = self.popen.wait(timeout)
        self._reader.join(timeout=5)
        return code

    def output(self) -> str:
        return "\n".join(self.tail)

    def last_line(self) -> str:
        """The most telling recent line: Flower's exit report (`Exit Code: N` and the two lines after
        it), else the last line that mentions an error, else the last line."""
        lines = [line.strip() for line in self.tail if line.strip()]
        exits = [i for i, line in enumerate(lines) if "Exit Code:" in line]
        if exits:
            return " ".join(lines[exits[-1]:exits[-1] + 3])
        errors = [line for line in lines if "error" in line.lower()]
        return (errors or lines or ["(no output)"])[-1]


def marked_pids(value: str, name: str = MARKER) -> set[int]:
    """Live processes whose environment holds name=value (Linux /proc; empty elsewhere)."""
    needle = f"{name}={value}".encode()
    pids = set()
    proc = Path("/proc")
    if not proc.is_dir():
        return pids
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.add(int(entry.name))
        except OSError:  # gone, a zombie, or not ours
            continue
    return pids


def _signal(pid: int, sig: int, group: bool) -> None:
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---- the deployment -----------------------------------------------------------------------------

@dataclass
class Options:
    num_nodes: int
    secure: bool = False
    certs_dir: Path | None = None
    run_config: str = ""
    timeout: float = 3600.0  # seconds for the whole deployment, start to teardown
    app: str | None = None
    probe_unenrolled: bool = False  # secure mode: also start one SuperNode whose key was never enrolled
    quiet: bool = False  # do not echo the processes' logs (run.log has them)
    force: bool = False  # replace an earlier run's results in out
    grace: float = 10.0  # seconds between SIGTERM and SIGKILL at teardown


@dataclass
class Deployment:
    """The running processes of one deployment and the private FLWR_HOME that `flwr` uses to reach
    the SuperLink. Use as a context manager: leaving it stops every process, whatever happened."""

    workdir: Path
    bins: dict[str, str]
    tls: TlsFiles | None = None
    echo: Callable[[str], None] | None = print
    cwd: Path = field(default_factory=Path.cwd)
    grace: float = 10.0
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    processes: list[Process] = field(default_factory=list)
    superlink_port: int = 0
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "FLWR_HOME": str(self.home), MARKER: self.marker, "PYTHONUNBUFFERED": "1",
                    # SuperLink and SuperNodes start `flower-superexec` by name: find it in this environment
                    "PATH": os.pathsep.join([str(Path(self.bins["flower-superexec"]).parent), os.environ.get("PATH", "")])}
        self.env.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no network calls from a loopback deployment
        self.env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
        # Every message starts a fresh flwr-clientapp (Flower 1.41 has no long-lived one): its
        # node's flower-superexec looks for it every 0.05 s instead of Flower's default 1 s, and
        # the nodes share one copy of the data splits on disk instead of splitting again each time.
        self.env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.05")
        from fedkd.data import SPLITS_CACHE_ENV

        self.env.setdefault(SPLITS_CACHE_ENV, str(self.workdir / "splits-cache"))

    def __enter__(self) -> "Deployment":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    # -- starting --
    def start(self, name: str, argv: list[str]) -> Process:
        self.say(f"starting {name}: {shlex.join(argv)}")
        try:
            process = Process(name, argv, self.env, self.cwd, self.echo)
        except OSError as exc:
            raise DeployError(f"cannot start {name} ({argv[0]}): {exc.strerror or exc}") from None
        self.processes.append(process)
        return process

    def say(self, text: str) -> None:
        if self.echo is not None:
            self.echo(f"{'deploy':<10}| [{time.monotonic() - self.started:6.1f}s] {text}")

    def start_superlink(self, port: int, ready_within: float = 60.0) -> Process:
        """flower-superlink on 127.0.0.1:`port`; returns once its /health answers (and writes the
        `flwr` connection to it)."""
        argv = [self.bins["flower-superlink"], "--host", "127.0.0.1", "--port", str(port),
                "--isolation", "subprocess",  # it starts the ServerApp itself, through flower-superexec
                "--disable-runtime-dependency-installation"]  # the app's dependencies are installed here already
        if self.tls is None:
            argv.append("--insecure")
        else:
            argv += ["--ssl-ca-certfile", str(self.tls.ca_cert), "--ssl-certfile", str(self.tls.server_cert),
                     "--ssl-keyfile", str(self.tls.server_key), "--enable-supernode-auth"]
        self.superlink_port = port
        self._write_flwr_config()
        process = self.start("superlink", argv)
        deadline = time.monotonic() + ready_within
        while not self._healthy():
            if process.poll() is not None:
                raise DeployError(f"superlink exited with code {process.poll()}: {process.last_line()}")
            if time.monotonic() > deadline:
                raise DeployError(f"superlink did not answer on 127.0.0.1:{port} within {ready_within:.0f}s")
            time.sleep(0.2)
        return process

    def _write_flwr_config(self) -> None:
        import tomli_w

        conn: dict[str, Any] = {"address": f"127.0.0.1:{self.superlink_port}"}
        if self.tls is None:
            conn["insecure"] = True
        else:
            conn["root-certificates"] = str(self.tls.ca_cert)
        config = {"superlink": {"default": CONNECTION, CONNECTION: conn}}
        (self.home / "config.toml").write_text(tomli_w.dumps(config), encoding="utf-8")

    def _healthy(self) -> bool:
        scheme = "http" if self.tls is None else "https"
        context = None if self.tls is None else ssl.create_default_context(cafile=str(self.tls.ca_cert))
        try:
            with urllib.request.urlopen(f"{scheme}://127.0.0.1:{self.superlink_port}/health",
                                        timeout=2, context=context) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def start_supernode(self, name: str, node_config: str, port: int, key: NodeKey | None = None) -> Process:
        argv = [self.bins["flower-supernode"], "--superlink", f"127.0.0.1:{self.superlink_port}",
                "--node-config", node_config, "--isolation", "subprocess",  # it starts each ClientApp itself
                "--host", "127.0.0.1", "--port", str(port)]
        if self.tls is None:
            argv.append("--insecure")
        else:  # TLS to the SuperLink, and on the node's own Runtime API (its flower-superexec's link)
            argv += ["--root-certificates", str(self.tls.ca_cert), "--ssl-ca-certfile", str(self.tls.ca_cert),
                     "--ssl-certfile", str(self.tls.server_cert), "--ssl-keyfile", str(self.tls.server_key)]
        if key is not None:
            argv += ["--auth-supernode-private-key", str(key.private)]
        return self.start(name, argv)

    # -- talking to the SuperLink with `flwr` --
    def flwr(self, *args: str, timeout: float = 60.0) -> dict:
        """Run `flwr ARGS --format json` against this deployment's SuperLink; its JSON answer."""
        argv = [self.bins["flwr"], *args, "--format", "json"]
        try:
            done = subprocess.run(argv, env=self.env, cwd=self.cwd, capture_output=True, text=True,
                                  timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise DeployError(f"'flwr {' '.join(args[:2])}' did not answer within {timeout:.0f}s") from None
        start = done.stdout.find("{")
        try:
            answer = json.loads(done.stdout[start:]) if start >= 0 else {}
        except json.JSONDecodeError:
            answer = {}
        if done.returncode != 0 or not answer.get("success", False):  # flwr may exit 0 with success=false
            text = ANSI.sub("", str(answer.get("error-message") or done.stderr or done.stdout))
            detail = ([line.strip() for line in text.splitlines() if line.strip()] or ["no output"])[-1]
            raise DeployError(f"'flwr {' '.join(args[:2])}' failed: {detail}")
        return answer

    def enroll(self, key: NodeKey) -> str:
        """Register a SuperNode's public key with the SuperLink; returns its node id."""
        answer = self.flwr("supernode", "register", str(key.public), CONNECTION)
        return str(answer.get("node-id"))

    def online_nodes(self) -> int:
        nodes = self.flwr("supernode", "list", CONNECTION).get("nodes", [])
        return sum(1 for node in nodes if str(node.get("status", "")).lower() == "online")

    def wait_nodes(self, count: int, nodes: Sequence[Process], within: float, report_every: float = 15.0) -> None:
        started = time.monotonic()
        deadline, next_report = started + within, started + report_every
        while True:
            for node in nodes:
                if node.poll() is not None:
                    raise DeployError(f"{node.name} exited with code {node.poll()}: {node.last_line()}")
            online = self.online_nodes()
            if online >= count:
                return
            now = time.monotonic()
            if now > deadline:
                raise DeployError(f"only {online} of {count} SuperNodes connected within {within:.0f}s")
            if now >= next_report:
                self.say(f"waiting for {count} SuperNodes, {online} online ({now - started:.0f} of {within:.0f}s)")
                next_report = now + report_every
            time.sleep(0.5)

    def submit(self, app_dir: Path, run_config: dict[str, Any]) -> int:
        """`flwr run` the app with `run_config` (written to a TOML file: no shell quoting); the run id."""
        import tomli_w

        path = self.workdir / "run-config.toml"
        path.write_text(tomli_w.dumps(run_config), encoding="utf-8")
        answer = self.flwr("run", str(app_dir), CONNECTION, "--run-config", str(path), timeout=120)
        return int(answer["run-id"])

    def run_status(self, run_id: int) -> str:
        runs = self.flwr("ls", CONNECTION, "--run-id", str(run_id)).get("runs", [])
        return str(runs[0].get("status", "unknown")) if runs else "unknown"

    def wait_run(self, run_id: int, watch: Sequence[Process], deadline: float, poll_every: float = 10.0) -> str:
        """Stream the run's log and wait for its final status ('finished:completed', ...). Any watched
        process exiting first, or the deadline passing, is a DeployError."""
        stream = self.start("run", [self.bins["flwr"], "log", str(run_id), CONNECTION, "--stream"])
        stream_ended, next_poll = False, time.monotonic() + poll_every
        while True:
            if time.monotonic() > deadline:
                raise DeployError(f"run {run_id} did not finish within the deployment's timeout (--timeout)")
            for process in watch:
                if process.poll() is not None:
                    raise DeployError(f"{process.name} exited with code {process.poll()} during run {run_id}: "
                                      f"{process.last_line()}")
            if not stream_ended and stream.poll() is not None:  # the log ends with the run: ask now,
                stream_ended, next_poll, poll_every = True, time.monotonic(), 2.0  # then more often
            if time.monotonic() >= next_poll:
                status = self.run_status(run_id)
                if status.startswith(FINISHED):
                    return status
                next_poll = time.monotonic() + poll_every
            time.sleep(0.25)

    # -- stopping --
    def stop_all(self) -> None:
        """SIGTERM every process group, wait up to `grace`, then SIGKILL the groups and every process
        that still carries this deployment's marker. Safe to call more than once."""
        with _signals_deferred():  # a second Ctrl-C must not cut teardown short and leave orphans
            self._stop_all()

    def _stop_all(self) -> None:
        live = [p for p in self.processes if p.poll() is None]
        if live or marked_pids(self.marker):
            self.say(f"stopping {len(live)} processes (SIGTERM, then SIGKILL after {self.grace:.0f}s)")
        for p in reversed(live):  # the run's client and SuperNodes first, the SuperLink last
            _signal(p.pid, signal.SIGTERM, group=True)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and (any(p.poll() is None for p in live) or marked_pids(self.marker)):
            time.sleep(0.1)
        for p in self.processes:
            _signal(p.pid, signal.SIGKILL, group=True)  # the group outlives its leader: kill it regardless
        for pid in marked_pids(self.marker):  # descendants that left the groups (new sessions)
            _signal(pid, signal.SIGKILL, group=False)
        for p in self.processes:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        end = time.monotonic() + 5
        while marked_pids(self.marker) and time.monotonic() < end:
            time.sleep(0.1)


@contextmanager
def _signals_deferred():
    """Ignore SIGINT and SIGTERM inside the block (main thread only; elsewhere signals cannot arrive)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_deployment(opts: Options, echo: Callable[[str], None] | None = print) -> dict:
    """Deploy, run the app once and tear down. Returns results.json's dict; raises UsageError or
    DeployError with a one-line message."""
    started = time.monotonic()
    deadline = started + opts.timeout
    require_clients("N", opts.num_nodes)  # one SuperNode per client
    if opts.timeout <= 0:
        raise UsageError(f"--timeout={opts.timeout} must be > 0")
    if opts.certs_dir is not None and not opts.secure:
        raise UsageError("--certs-dir is only used with --secure")
    if opts.secure and opts.certs_dir is None:
        raise UsageError("--secure needs --certs-dir DIR (where the CA, server certificate and node keys go)")
    if opts.probe_unenrolled and not opts.secure:
        raise UsageError("--probe-unenrolled needs --secure (without it every SuperNode is accepted)")
    bins = find_binaries()
    cwd = Path.cwd()
    app_dir = find_app(opts.app, cwd)
    run_config = build_run_config(opts.run_config, opts.num_nodes, app_defaults(app_dir), cwd)
    from fedkd.results import OutputError, prepare_out

    certs = opts.certs_dir.expanduser().resolve() if opts.secure else None
    if certs is not None:  # every usage check before the output folder is made
        check_writable(certs)
    try:  # a `latest` out becomes a fresh timestamped folder; an earlier run's is refused without --force
        run_config["out"] = str(prepare_out(run_config["out"], force=opts.force).resolve())
    except OutputError as exc:
        raise UsageError(str(exc)) from None

    tls, keys = None, []
    if certs is not None:
        tls = write_tls_files(certs)
        keys = node_keys(certs / "nodes", opts.num_nodes)

    workdir = Path(tempfile.mkdtemp(prefix="fedkd-deploy-"))
    log = open(Path(run_config["out"]) / "run.log", "a", encoding="utf-8")
    log_lock = threading.Lock()

    def echo_and_log(line: str) -> None:  # every process's lines, whatever the console shows
        with log_lock:
            if not log.closed:  # a reader thread may outlive teardown by a moment
                log.write(line + "\n")
                log.flush()
        if echo is not None:
            echo(line)

    try:
        with Deployment(workdir, bins, tls, echo=echo_and_log, cwd=cwd, grace=opts.grace) as dep:
            ports = free_ports(opts.num_nodes + 2)
            dep.start_superlink(ports[0], ready_within=max(1.0, min(60.0, deadline - time.monotonic())))
            for key in keys:
                dep.say(f"enrolled {key.public.name} as node {dep.enroll(key)}")
            nodes = [dep.start_supernode(f"node-{i}", f"partition-id={i} num-partitions={opts.num_nodes}",
                                         ports[1 + i], keys[i] if keys else None)
                     for i in range(opts.num_nodes)]
            if opts.probe_unenrolled:
                _probe_unenrolled(dep, workdir, ports[-1], opts.num_nodes, deadline)
            dep.wait_nodes(opts.num_nodes, nodes, within=max(1.0, min(120.0, deadline - time.monotonic())))
            dep.say(f"{opts.num_nodes} SuperNodes connected; submitting the run")
            run_id = dep.submit(app_dir, run_config)
            dep.say(f"run {run_id} submitted (results in {run_config['out']})")
            status = dep.wait_run(run_id, [dep.processes[0], *nodes], deadline)
            dep.say(f"run {run_id} ended: {status}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        with log_lock:
            log.close()

    results_path = Path(run_config["out"]) / "results.json"
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        results = {}
    if status != FINISHED + "completed":
        raise DeployError(f"run {run_id} ended {status.removeprefix(FINISHED)}"
                          + (f": {results['error']}" if results.get("error") else " (see the log above)"))
    if results.get("status") != "completed":
        raise DeployError(f"run {run_id} finished but {results_path} says status={results.get('status')!r}")
    results["deploy_seconds"] = time.monotonic() - started
    return results


def _probe_unenrolled(dep: Deployment, workdir: Path, port: int, num_nodes: int, deadline: float) -> None:
    """Start one SuperNode whose key was never enrolled and require the SuperLink to refuse it."""
    key = write_node_key(NodeKey(workdir / "unenrolled.key", workdir / "unenrolled.pub"))
    probe = dep.start_supernode("unenrolled", f"partition-id={num_nodes} num-partitions={num_nodes + 1}", port, key)
    try:
        code = probe.wait(timeout=max(1.0, min(60.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        raise DeployError("the SuperNode with an unenrolled key was not refused within 60s") from None
    if code == 0 or NODE_REFUSED not in probe.output():
        raise DeployError(f"the SuperNode with an unenrolled key was not refused (exit code {code}): "
                          f"{probe.last_line()}")
    dep.say(f"refused as expected: the SuperNode with an unenrolled key exited with code {code}")


# ---- command line -------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("num_nodes", metavar="N", type=int, help="number of SuperNodes (partitions), at least 2")
    parser.add_argument("--secure", action="store_true",
                        help="TLS on every connection and SuperNode authentication (only enrolled keys join)")
    parser.add_argument("--certs-dir", type=Path, default=None,
                        help="with --secure: folder for the CA, the server certificate and node keys (reused if valid)")
    parser.add_argument("--run-config", default="", metavar="'K=V ...'",
                        help="run settings as for `flwr run --run-config`; num-clients is set to N")
    parser.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                        help="seconds for the whole deployment before it is stopped (default: 3600)")
    parser.add_argument("--app", default=None, metavar="DIR",
                        help="folder of the fedkd project to submit (default: the one this module comes from, "
                             "else the current folder)")
    parser.add_argument("--probe-unenrolled", action="store_true",
                        help="with --secure: also start a SuperNode with an unenrolled key and require its refusal")
    parser.add_argument("--quiet", action="store_true",
                        help="show only this command's own lines, not the processes' logs (those are in run.log)")
    parser.add_argument("--force", action="store_true",
                        help="replace the results of an earlier run in the run's out folder (otherwise refused)")


def main(args: argparse.Namespace) -> int:
    """Run `fedkd deploy` from parsed arguments: 0 completed, 1 the run failed, 2 bad usage, 130 interrupted."""
    opts = Options(num_nodes=args.num_nodes, secure=args.secure, certs_dir=args.certs_dir,
                   run_config=args.run_config, timeout=args.timeout, app=args.app,
                   probe_unenrolled=args.probe_unenrolled, quiet=args.quiet, force=args.force)
    lock = threading.Lock()

    def echo(line: str) -> None:
        if opts.quiet and not line.startswith("deploy"):
            return
        with lock:
            print(line, flush=True)

    previous = _terminate_as_interrupt()
    try:
        results = run_deployment(opts, echo=echo)
    except UsageError as exc:
        print(f"fedkd deploy: error: {exc}", file=sys.stderr)
        return 2
    except DeployError as exc:
        print(f"fedkd deploy: run failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fedkd deploy: interrupted; every process was stopped", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    final = results.get("final", {})
    acc = final.get("student_accuracy")
    rounds = len(results.get("rounds", []))
    print(f"fedkd deploy: completed {rounds} round{'s' if rounds != 1 else ''} on {opts.num_nodes} SuperNodes in "
          f"{results['deploy_seconds']:.1f}s; student accuracy "
          f"{'n/a' if acc is None else f'{acc:.4f}'}; results in {results.get('config', {}).get('out')}", flush=True)
    return 0


def _terminate_as_interrupt():
    """Make SIGTERM behave like Ctrl-C (so teardown runs); returns the previous handler, or None off
    the main thread where handlers cannot be set."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fedkd.deploy",
                                     description="Run fedkd on a local Flower deployment: 1 SuperLink, N SuperNodes.")
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
