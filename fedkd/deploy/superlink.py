"""One deployment's Flower side: a SuperLink and its SuperNodes on 127.0.0.1, driven with `flwr`.

Owns: the Flower commands (found beside this Python, else on PATH), `Deployment` (a private
FLWR_HOME with the `flwr` connection to the SuperLink, the environment every process gets, starting
flower-superlink and flower-supernode in plain or TLS mode, enrolling node keys, waiting for nodes,
submitting the run with `flwr run`, streaming its log and waiting for its final status), and
`DeployError`, the failure of a deployment or its run (exit code 1). Must not touch: the app itself
(`fedkd.apps` only runs inside the processes started here), the user's ~/.flwr, any fixed port;
how processes are started and stopped is `procs`' job, certificates and keys `pki`'s.

Process tree (each started by `Deployment.start` in a session of its own, all carrying the marker):

    flower-superlink --port P0     serves the Fleet, Control and Runtime APIs over HTTP(S) on P0
      flower-superexec               started by the SuperLink (its own session) ...
        flwr-serverapp                 ... which starts the ServerApp of each run
    flower-supernode --port Pi     one per partition i; its Runtime API on Pi
      flower-superexec
        flwr-clientapp               one per message
    flwr run / flwr log --stream   the run's submission and its log stream
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import tomli_w

from fedkd.deploy.pki import NodeKey, TlsFiles
from fedkd.deploy.procs import ANSI, MARKER, Process, stop_processes
from fedkd.errors import UsageError

CONNECTION = "fedkd-deploy"  # the SuperLink connection's name in the private FLWR_HOME/config.toml
BINARIES = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr")
FINISHED = "finished:"  # prefix of a run's final status in `flwr ls`: completed, failed or stopped
NODE_REFUSED = "Failed to initialize the connection to the SuperLink"  # flower-supernode's exit message
# This command's own lines (`Deployment.say`) start with SAID; those that give a process's whole
# command line start with STARTING (run.log keeps them, the console leaves them out), and the
# periodic wait for SuperNodes with WAITING (the console's progress line shows it).
SAID = "deploy"
STARTING = "starting "
WAITING = "waiting for "


class DeployError(Exception):
    """The deployment or its run failed (exit code 1); the message is one line."""


def find_binaries() -> dict[str, str]:
    """Paths of the Flower commands, preferring the ones beside this Python (its virtual environment)."""
    here = Path(sys.executable).parent
    found = {}
    for name in BINARIES:
        path = here / name if (here / name).is_file() else shutil.which(name)
        if path is None:
            raise UsageError(f"'{name}' was not found beside {sys.executable} nor on PATH; "
                             "install Flower 1.41 or 1.42 in this environment (pip install 'flwr>=1.41,<1.43')")
        found[name] = str(path)
    return found


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
        self.env = _environment(self.home, self.marker, Path(self.bins["flower-superexec"]).parent,
                                self.workdir / "splits-cache")

    def __enter__(self) -> "Deployment":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    # -- starting --
    def start(self, name: str, argv: list[str]) -> Process:
        self.say(f"{STARTING}{name}: {shlex.join(argv)}")
        try:
            process = Process(name, argv, self.env, self.cwd, self.echo)
        except OSError as exc:
            raise DeployError(f"cannot start {name} ({argv[0]}): {exc.strerror or exc}") from None
        self.processes.append(process)
        return process

    def say(self, text: str) -> None:
        if self.echo is not None:
            self.echo(f"{SAID:<10}| [{time.monotonic() - self.started:6.1f}s] {text}")

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
                self.say(f"{WAITING}{count} SuperNodes, {online} online ({now - started:.0f} of {within:.0f}s)")
                next_report = now + report_every
            time.sleep(0.5)

    def submit(self, app_dir: Path, run_config: dict[str, Any]) -> int:
        """`flwr run` the app with `run_config` (written to a TOML file: no shell quoting); the run id."""
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
        stop_processes(self.processes, self.marker, self.grace, self.say)


def _environment(home: Path, marker: str, flower_bin: Path, splits_cache: Path) -> dict[str, str]:
    """This environment plus what every process of a deployment needs: `flwr`'s private FLWR_HOME,
    the marker teardown looks for, unbuffered output, and the Flower commands' folder on PATH."""
    from fedkd.data import SPLITS_CACHE_ENV
    from fedkd.results import RUN_LOG_ENV

    env = {**os.environ, "FLWR_HOME": str(home), MARKER: marker, "PYTHONUNBUFFERED": "1",
           RUN_LOG_ENV: "launcher",  # run.log is this command's (every process's lines): the ServerApp writes none
           # SuperLink and SuperNodes start `flower-superexec` by name: find it in this environment
           "PATH": os.pathsep.join([str(flower_bin), os.environ.get("PATH", "")])}
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no network calls from a loopback deployment
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    # Every message starts a fresh flwr-clientapp (Flower 1.41 has no long-lived one): its
    # node's flower-superexec looks for it every 0.05 s instead of Flower's default 1 s, and
    # the nodes share one copy of the data splits on disk instead of splitting again each time.
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.05")
    env.setdefault(SPLITS_CACHE_ENV, str(splits_cache))
    return env
