"""The engine's thread count follows the cores other processes leave free (edgetts.runtimes.cores)."""

from __future__ import annotations

import pytest

from edgetts.runtimes.cores import FreeCores, busy_seconds


class Machine:
    """A fake clock, machine-wide CPU seconds and this process's CPU seconds, advanced by hand."""

    def __init__(self):
        self.now = self.busy = self.own = 0.0

    def run(self, seconds: float, ours: float, others: float) -> None:
        """`seconds` of wall time with `ours` and `others` cores' worth of work running."""
        self.now += seconds
        self.own += ours * seconds
        self.busy += (ours + others) * seconds

    def cores(self, most: int, every_s: float = 0.2) -> FreeCores:
        return FreeCores(most, every_s, busy=lambda: self.busy, own=lambda: self.own, clock=lambda: self.now)


def test_every_core_while_the_others_are_idle_and_one_less_per_busy_core():
    machine = Machine()
    cores = machine.cores(most=4)
    machine.run(0.5, ours=4.0, others=0.1)  # our own workers spinning are not someone else's load
    assert cores.update() == 4
    machine.run(0.5, ours=3.0, others=1.0)  # one core taken by another process
    assert cores.update() == 3
    machine.run(0.5, ours=1.0, others=2.6)
    assert cores.update() == 1
    machine.run(0.5, ours=1.0, others=9.0)  # never fewer than one thread
    assert cores.update() == 1
    machine.run(0.5, ours=4.0, others=0.0)  # back to all of them once the others stop
    assert cores.update() == 4


def test_the_machine_is_reread_only_once_a_window_has_passed():
    machine = Machine()
    cores = machine.cores(most=2, every_s=0.2)
    machine.run(0.5, ours=2.0, others=0.0)
    assert cores.update() == 2
    machine.run(0.1, ours=1.0, others=1.0)
    assert cores.update() == 2  # 0.1 s: too soon to judge, the last count stands
    machine.run(0.15, ours=1.0, others=1.0)
    assert cores.update() == 1


def test_without_a_cpu_reading_the_count_stays_at_the_most():
    cores = FreeCores(3, busy=lambda: None, own=lambda: 0.0, clock=lambda: 0.0)
    assert cores.threads == 3 and cores.update() == 3


def test_this_machine_reports_busy_seconds_that_grow():
    first = busy_seconds()
    if first is None:
        pytest.skip("no /proc/stat here (macOS, Windows): FreeCores keeps the most")
    sum(i * i for i in range(200_000))
    assert busy_seconds() >= first > 0


def test_the_first_guess_reads_the_run_queue_not_the_minute_old_load(tmp_path, monkeypatch):
    from edgetts.runtimes import cores

    loadavg = tmp_path / "loadavg"
    monkeypatch.setattr(cores, "LOADAVG", loadavg)
    loadavg.write_text("3.90 3.10 2.00 1/120 4242\n")  # a busy minute that has ended: only we run now
    assert FreeCores(4).threads == 4
    loadavg.write_text("0.10 0.10 0.10 3/120 4242\n")  # two others runnable right now
    assert FreeCores(4).threads == 2
