"""fedkd.bench.procs: process trees and their memory from /proc."""

import subprocess
import sys
import time

from fedkd.bench import procs


def test_a_child_is_found_by_tree_and_by_word_and_its_memory_counts():
    word = f"fedkd-procs-test-{time.monotonic_ns()}"
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(60)", word])
    try:
        deadline = time.monotonic() + 30
        while child.pid not in procs.matching(word) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert procs.matching(word) == [child.pid]
        assert child.pid in procs.descendants(procs.os.getpid())
        assert procs.tree_rss() > procs.rss_bytes([procs.os.getpid()]) > 0
        with procs.PeakRSS(every=0.05) as peak:
            pass
        assert peak.peak >= peak.own_peak > 0
    finally:
        child.kill()
        child.wait()
    assert procs.wait_gone([child.pid], timeout=10) == []
