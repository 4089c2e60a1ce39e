"""The count rate of an acquisition, from (time, counts) samples the shell takes. Pure: no clock."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

#: Samples kept: the rate spans the last ``SAMPLES - 1`` intervals between them.
SAMPLES = 3


@dataclass
class CountRate:
    """Counts per second over the last few intervals between samples.

    The service takes a sample at every periodic status while the acquisition
    runs, so the rate covers its last two status intervals, is None until there
    are two samples, and after the stop stays what it was at the last one.
    """

    samples: deque = field(default_factory=lambda: deque(maxlen=SAMPLES))

    def note(self, time_s: float, counts: int) -> None:
        """Record the counts accumulated at ``time_s`` (a monotonic clock, in s)."""
        if self.samples and time_s <= self.samples[-1][0]:
            return  # no time has passed: nothing to measure over
        self.samples.append((float(time_s), int(counts)))

    @property
    def value(self) -> float | None:
        """Counts per second between the oldest and the newest sample; None with fewer than two."""
        if len(self.samples) < 2:
            return None
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        return max(c1 - c0, 0) / (t1 - t0)
