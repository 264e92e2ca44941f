"""Hiccups: how often the machine itself runs this process's Python slowly, with no scheduler involved.

    python bench/hiccups.py [SECONDS=20]

A fixed piece of pure-Python work is timed over and over. A chunk that takes more than 2.5 times
the median is slow; slow chunks less than 20 ms apart are one episode. The steady benchmark's
late seconds are read against these figures: an episode that falls on a second's thousand task
starts makes the whole second late, and one such second in twenty sets a run's p99.
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass, field

from common import median, report

SLOW = 2.5
"""A chunk slower than this many times the median is slow."""
APART = 0.02
"""Slow chunks closer together than this (seconds) belong to one episode."""


def chunk() -> int:
    total = 0
    for i in range(20_000):
        total += i * i
    return total


@dataclass
class Episode:
    began: float
    ended: float
    worst: float = 1.0
    lost: float = 0.0
    """Seconds beyond what its chunks take at the median."""
    chunks: list[float] = field(default_factory=list)


def measure(seconds: float) -> tuple[float, int, list[Episode]]:
    """(median chunk seconds, chunks, episodes) over ``seconds`` of real time."""
    samples: list[tuple[float, float]] = []
    end = time.perf_counter() + seconds
    gc.disable()  # the process's own collections are not the machine's
    try:
        while (began := time.perf_counter()) < end:
            chunk()
            samples.append((began, time.perf_counter() - began))
    finally:
        gc.enable()
    typical = median(took for _, took in samples)
    episodes: list[Episode] = []
    for began, took in samples:
        if took <= SLOW * typical:
            continue
        if not episodes or began - episodes[-1].ended > APART:
            episodes.append(Episode(began, began + took))
        ep = episodes[-1]
        ep.ended = began + took
        ep.worst = max(ep.worst, took / typical)
        ep.lost += took - typical
        ep.chunks.append(took)
    return typical, len(samples), episodes


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    typical, chunks, episodes = measure(seconds)
    report("hiccups.chunk_median", typical * 1e3, "ms", f"{chunks} chunks in {seconds:g} s")
    report("hiccups.episodes_per_20s", len(episodes) * 20 / seconds, "count", f"chunks over {SLOW}x the median")
    report("hiccups.worst_slowdown", max((e.worst for e in episodes), default=1.0), "x")
    report("hiccups.longest_episode", max((e.ended - e.began for e in episodes), default=0.0) * 1e3, "ms")
    report("hiccups.most_lost_in_one", max((e.lost for e in episodes), default=0.0) * 1e3, "ms")


if __name__ == "__main__":
    main()
