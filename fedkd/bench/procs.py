"""Processes and their memory, read from Linux's /proc (no psutil): for benchmarks and tests.

Owns: listing a process's descendants, finding processes by a word in their command line, and
summing resident memory over a set of processes (a Flower simulation is the driver plus Ray's
raylet, GCS and one worker per actor). Must not touch: anything but reading /proc.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])  # the field after the state letter


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for p in all_pids():
        parent = _parent(p)
        if parent is not None:
            children.setdefault(parent, []).append(p)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def matching(word: str) -> list[int]:
    """Processes whose command line contains `word` (e.g. a Ray head's own temp dir)."""
    found = []
    for p in all_pids():
        try:
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if word in cmdline and p != os.getpid():
            found.append(p)
    return found


def rss_bytes(pids: list[int]) -> int:
    """Resident memory summed over `pids` (a process that has gone counts 0). Shared pages (torch's
    libraries mapped by every worker) count once per process, as `ps` and `top` count them."""
    total = 0
    for p in pids:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def tree_rss(pid: int | None = None, extra: tuple[int, ...] = ()) -> int:
    """RSS of `pid` (default: this process) and all its descendants, plus `extra` processes
    (Ray's daemons are not children of the driver when they run under a separate head)."""
    pid = os.getpid() if pid is None else pid
    return rss_bytes(sorted({pid, *descendants(pid), *extra}))


class PeakRSS:
    """Samples `tree_rss` every `every` seconds on a thread while in a `with` block; `.peak` bytes.
    Ray's workers are started by its raylet, which descends from the driver (`ray.init` starts it),
    so the tree of this process holds them all. `.own_peak`: this process alone (in a simulation,
    the driver, which also holds every simulated node's Flower context and `context.state`)."""

    def __init__(self, every: float = 0.5):
        self.every, self.peak, self.own_peak = every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.peak = max(self.peak, tree_rss())
        self.own_peak = max(self.own_peak, rss_bytes([os.getpid()]))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakRSS":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """The pids still alive after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if Path(f"/proc/{p}").exists()]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and not _zombie(p)]
    return alive


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"
