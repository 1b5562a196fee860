"""The learning-rate schedule of a run, kept in its checkpoint so a resumed run continues it.

A run plans a cosine decay from ``lr`` to ``FLOOR_SHARE * lr`` over its ``--iterations``. Resumed with
the same ``--iterations``, it goes on exactly where it stopped. Resumed with more, the rest of the decay
is stretched: from the rate reached, down to the floor, over the iterations left. The rate never rises
again (a restart undoes the decay's gains), and the run says so in plain words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from ..errors import SparseImplantError

FLOOR_SHARE = 0.02  # the schedule ends at this share of the starting rate

# A cosine from ``rate at first`` to ``rate at end`` over [first, end]; it holds from ``first`` until the next
# segment's first iteration (a later segment takes over when a resumed run is extended).
Segment = Tuple[int, int, float, float]  # first iteration, end, rate at first, rate at end


@dataclass
class Schedule:
    segments: List[Segment] = field(default_factory=list)

    @staticmethod
    def cosine(lr: float, iterations: int) -> "Schedule":
        return Schedule([(0, iterations, lr, lr * FLOOR_SHARE)])

    @property
    def end(self) -> int:
        return self.segments[-1][1]

    def rate(self, iteration: int) -> float:
        """The learning rate for the step after ``iteration`` steps."""
        first, end, start_rate, end_rate = [s for s in self.segments if s[0] <= iteration][-1]
        progress = min((iteration - first) / max(end - first, 1), 1.0)
        return end_rate + (start_rate - end_rate) * (1 + math.cos(math.pi * progress)) / 2

    def resized(self, iterations: int, done: int) -> Tuple["Schedule", Optional[str]]:
        """The schedule for a resumed run asked for ``iterations`` in all, ``done`` of them done, and a
        plain note when that changes the plan (None when it does not)."""
        if iterations == self.end:
            return self, None
        if iterations < done:
            raise SparseImplantError(f"--iterations {iterations} is below the {done} iterations this run has done: "
                                     f"pass --iterations {self.end} (its plan) or more")
        if iterations < self.end:
            raise SparseImplantError(f"this run is planned for {self.end} iterations; --iterations {iterations} "
                                     f"would cut its schedule short: pass --iterations {self.end} or more")
        now, floor = self.rate(done), self.segments[-1][3]
        kept = [segment for segment in self.segments if segment[0] < done]
        note = (f"extending the run from {self.end} to {iterations} iterations: from iteration {done} the learning "
                f"rate decays from {now:.2g} to {floor:.2g} over the {iterations - done} iterations left; it does not restart")
        return Schedule(kept + [(done, iterations, now, floor)]), note

    def to_json(self) -> List[list]:
        return [list(segment) for segment in self.segments]

    @staticmethod
    def from_json(segments: List[list]) -> "Schedule":
        return Schedule([(int(a), int(b), float(c), float(d)) for a, b, c, d in segments])
