"""Child processes of a deployment: starting them, reading their output, finding and stopping them.

Owns: `Process` (one child in its own session, its output copied line by line with a name prefix
and its last lines kept), the environment marker that every descendant inherits and that
teardown searches /proc for, the teardown itself (SIGTERM to each group, a grace period, SIGKILL
to the groups and to every marked process), signal handling around it, and free loopback ports.
Must not touch: Flower (which commands run is the caller's business), any fixed port, any process
that does not carry the marker.

Why a marker: Flower starts some processes in sessions of their own (the SuperLink's and each
SuperNode's `flower-superexec`, and the app processes below them), so they leave the process
group that SIGTERM/SIGKILL reach; the marker in their inherited environment still finds them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

MARKER = "FEDKD_DEPLOY_ID"  # environment variable inherited by every process a deployment starts
ANSI = re.compile(r"\x1b\[[0-9;]*m")


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


# ---- teardown -----------------------------------------------------------------------------------

def stop_processes(processes: Sequence[Process], marker: str, grace: float, say: Callable[[str], None]) -> None:
    """SIGTERM every process group (last started first), wait up to `grace` seconds, then SIGKILL
    the groups and every process that still carries `marker`. A second Ctrl-C cannot cut it short."""
    with _signals_deferred():  # an interrupted teardown would leave orphans
        live = [p for p in processes if p.poll() is None]
        if live or marked_pids(marker):
            say(f"stopping {len(live)} processes (SIGTERM, then SIGKILL after {grace:.0f}s)")
        for p in reversed(live):  # the run's client and SuperNodes first, the SuperLink last
            _signal(p.pid, signal.SIGTERM, group=True)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (any(p.poll() is None for p in live) or marked_pids(marker)):
            time.sleep(0.1)
        _kill_all(processes, marker)


def _kill_all(processes: Sequence[Process], marker: str) -> None:
    """SIGKILL what is left, reap the children, and wait (5 s at most) until no marked process remains."""
    for p in processes:
        _signal(p.pid, signal.SIGKILL, group=True)  # the group outlives its leader: kill it regardless
    for pid in marked_pids(marker):  # descendants that left the groups (new sessions)
        _signal(pid, signal.SIGKILL, group=False)
    for p in processes:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    end = time.monotonic() + 5
    while marked_pids(marker) and time.monotonic() < end:
        time.sleep(0.1)


def _signal(pid: int, sig: int, group: bool) -> None:
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


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


def terminate_as_interrupt():
    """Make SIGTERM behave like Ctrl-C, and Ctrl-C interrupt even when this process started with it
    ignored (a background job of a non-interactive shell inherits SIGINT ignored): either way
    teardown runs. Returns the previous handlers (to restore), or {} off the main thread where
    handlers cannot be set."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        raise KeyboardInterrupt

    return {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
            signal.SIGTERM: signal.signal(signal.SIGTERM, handler)}


# ---- ports --------------------------------------------------------------------------------------

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
