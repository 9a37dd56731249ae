"""How many CPU threads llama.cpp should run now: the cores other processes leave free.

llama.cpp's thread pool meets at a barrier after every operation of the graph. When another
process holds one of its cores, a worker waits for a scheduler slice at each barrier: measured on
the 2-core VM with one core busy, a decode step of the 5 M embedded generator at batch 16 took
1.6 ms at the median with 2 threads but 126 ms at the 99th percentile (161 ms at worst), against
2.3 / 3.8 ms with 1 thread. On the quiet machine 2 threads are 1.7x faster at batch 8-16. So the
engine uses every core while the others are idle and steps down while they are not, re-reading
the machine's CPU time every `every_s` seconds (about 20 µs a read).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable

PROC_STAT = Path("/proc/stat")
LOADAVG = Path("/proc/loadavg")
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (steal: a VM host took the core)
SPARE = 0.25  # cores of others' work tolerated before a thread steps down (ticks are 10 ms: noise)


def busy_seconds() -> float | None:
    """CPU seconds all processes have run on this machine (all cores), or None where /proc/stat is not."""
    try:
        fields = PROC_STAT.read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    return sum(int(fields[i]) for i in BUSY_FIELDS if i < len(fields)) / os.sysconf("SC_CLK_TCK")


class FreeCores:
    """Threads to use now: `most`, less one per core's worth of CPU that other processes used over
    the last window (this process's own CPU time, its llama.cpp workers included, is subtracted)."""

    def __init__(self, most: int, every_s: float = 0.2, busy: Callable[[], float | None] = busy_seconds,
                 own: Callable[[], float] = time.process_time, clock: Callable[[], float] = time.monotonic):
        self.most, self.every_s = most, every_s
        self._busy, self._own, self._clock = busy, own, clock
        self._last = (clock(), busy(), own())
        self.threads = most if self._last[1] is None else self._from_run_queue()

    def update(self) -> int:
        """The thread count for the next decode (cheap: re-measures at most every `every_s`)."""
        now = self._clock()
        then, busy_then, own_then = self._last
        if busy_then is None or now - then < self.every_s:
            return self.threads
        busy, own = self._busy(), self._own()
        others = max((busy - busy_then) - (own - own_then), 0.0) / (now - then)  # cores' worth
        self._last = (now, busy, own)
        self.threads = self._allowed(others)
        return self.threads

    def _allowed(self, others: float) -> int:
        return max(1, min(self.most, self.most - math.ceil(others - SPARE)))

    def _from_run_queue(self) -> int:
        """A first guess before a window has passed: the threads runnable on the machine right now, of
        which this one is one (the load average would still count work that ended a minute ago)."""
        try:
            runnable = int(LOADAVG.read_text().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return self.most
        return self._allowed(max(runnable - 1, 0))
