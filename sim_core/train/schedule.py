"""When the loop logs, evaluates, snapshots, saves pictures and checkpoints. Every action also happens after the last
iteration. Evaluation and snapshots follow ``train.eval_schedule``: "every" (each eval_every / snapshot_every
iterations) or "sid" (SiD's cadence in images, below)."""
from __future__ import annotations

# SiD's evaluation/snapshot cadence (sid_train.py: tick 10 kimg, snap 50 ticks; sid_training_loop.py also at
# ticks 10, 20, ..., 100): every 100 kimg up to 1 Mimg, then every 500 kimg. Here on the image count itself.
SID_EVAL_STEP_EARLY, SID_EVAL_EARLY_UNTIL, SID_EVAL_STEP_LATE = 100_000, 1_000_000, 500_000


def _sid_marks_reached(nimg: int) -> int:
    """How many of SiD's evaluation marks (100k, 200k, ..., 1M, 1.5M, 2M, ...) are <= nimg."""
    early = min(nimg, SID_EVAL_EARLY_UNTIL) // SID_EVAL_STEP_EARLY
    late = max(nimg - SID_EVAL_EARLY_UNTIL, 0) // SID_EVAL_STEP_LATE
    return early + late


def sid_eval_due(nimg_before: int, nimg_after: int) -> bool:
    """True when a step that took the image count from nimg_before to nimg_after crossed (or reached) a mark of
    SiD's cadence. SiD's own ticks end at the first multiple of the batch past each 10 kimg, so its marks drift
    by up to one batch per tick; this schedule puts them at the exact image counts."""
    return _sid_marks_reached(int(nimg_after)) > _sid_marks_reached(int(nimg_before))


def every(step: int, n: int) -> bool:
    """Each n-th step; never for n = 0."""
    return n > 0 and step % n == 0


class Schedule:
    """The train section's cadence, asked after each iteration with the step reached and the image counts before
    and after it."""

    def __init__(self, train_cfg):
        self.t = train_cfg

    def _last(self, step: int) -> bool:
        return step == self.t.iterations

    def log(self, step: int) -> bool:
        return every(step, self.t.log_every) or self._last(step)

    def evaluate(self, step: int, nimg_before: int, nimg: int) -> bool:
        if self.t.eval_schedule == "sid":
            return sid_eval_due(nimg_before, nimg) or self._last(step)
        return every(step, self.t.eval_every) or self._last(step)

    def snapshot(self, step: int, nimg_before: int, nimg: int) -> bool:
        """SiD's schedule snapshots with every evaluation; snapshot_every adds more."""
        sid = self.t.eval_schedule == "sid" and sid_eval_due(nimg_before, nimg)
        return every(step, self.t.snapshot_every) or sid or self._last(step)

    def samples(self, step: int) -> bool:
        return every(step, self.t.sample_every) or self._last(step)

    def checkpoint(self, step: int) -> bool:
        return every(step, self.t.checkpoint_every) or self._last(step)
