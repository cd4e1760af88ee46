"""Training advice from the number of usable clips (and, when known, the job's settings).

The table below is the single place where the rules of thumb live; the validator quotes it.
From 10 clips up the steps are the ComfyUI-SelVA guide's table ("with batch_size=4 as the
default": 10-20 clips 2000-4000, 20-50 4000-8000, 50+ 6000-15000). Below 10 clips the guide
has no row (its size table calls 5-10 clips "a quick test ... often underfits"); selvad adds
two so a small dataset still gets a number: 1-4 clips are memorised well before 2000 steps.
Rows are (fewest clips, most clips, expectation, steps range at batch 4, rank, targets):

| clips   | expectation                                          | steps        | rank  | targets          |
|---------|------------------------------------------------------|--------------|-------|------------------|
| 1-4     | memorisation: the adapter replays these clips        | 1000-2000    | 8-16  | attn.qkv         |
| 5-9     | a quick test: often underfits                        | 2000-4000    | 16    | attn.qkv         |
| 10-19   | a style adapter for a sound the model knows          | 2000-4000    | 16    | attn.qkv         |
| 20-49   | a usable adapter                                     | 4000-8000    | 16-32 | attn.qkv         |
| 50-149  | a solid adapter                                      | 6000-15000   | 32    | attn.qkv         |
| 150+    | enough data for wider adapters                       | 6000-15000   | 32-64 | attn.qkv linear1 |

Extra rules when a TrainConfig (or target list) is given:
- `linear1` among the targets with fewer than 150 clips: "linear1 only pays off with 150+ clips".
- `steps` outside the row's range: say so, with the range.
- a batch other than 4 (batch_size x grad_accum): the steps are for batch 4; larger batches
  converge in fewer steps (the guide: batch 16 reached in ~2600 steps what batch 1 needed 8000+
  for), so the range is quoted, not rescaled.
- `batch_size` larger than the clip count: every batch repeats clips.
- fewer than 8 clips: no clip is held out for validation loss (val_clips default 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from selva_engine.training.options import TrainConfig

__all__ = ["ADVICE_TABLE", "LINEAR1_MIN_CLIPS", "AdviceRow", "advise", "row_for"]

LINEAR1_MIN_CLIPS = 150


@dataclass(frozen=True)
class AdviceRow:
    """One row of the clip-count table (bounds inclusive; max_clips None = no upper bound)."""

    min_clips: int
    max_clips: int | None
    expectation: str
    steps: tuple[int, int]
    rank: str
    targets: str


GUIDE_BATCH = 4  # the guide's step table is for batch_size 4

ADVICE_TABLE: tuple[AdviceRow, ...] = (
    AdviceRow(1, 4, "expect memorisation (the adapter replays these clips); add clips if you can",
              (1000, 2000), "8-16", "attn.qkv"),
    AdviceRow(5, 9, "expect underfit (a quick test; the guide's table starts at 10 clips)",
              (2000, 4000), "16", "attn.qkv"),
    AdviceRow(10, 19, "enough for a style adapter of a sound the model knows", (2000, 4000), "16",
              "attn.qkv"),
    AdviceRow(20, 49, "enough for a usable adapter", (4000, 8000), "16-32", "attn.qkv"),
    AdviceRow(50, 149, "enough for a solid adapter", (6000, 15000), "32", "attn.qkv"),
    AdviceRow(150, None, "the linear1 target pays off", (6000, 15000), "32-64",
              "attn.qkv linear1"),
)


def row_for(n_clips: int) -> AdviceRow | None:
    """The table row for `n_clips` usable clips, or None when there are none."""
    for row in ADVICE_TABLE:
        if n_clips >= row.min_clips and (row.max_clips is None or n_clips <= row.max_clips):
            return row
    return None


def advise(n_clips: int, config: TrainConfig | None = None,
           targets: Sequence[str] | None = None) -> list[str]:
    """Advice lines for a dataset of `n_clips` usable clips, optionally for a given job.

    `config` (a TrainConfig) adds checks of its steps, batch size and targets; `targets`
    overrides the config's target list. Returns human sentences, most important first; an
    empty dataset gives one line saying nothing can be trained. Pure function.
    """
    row = row_for(n_clips)
    if row is None:
        return ["0 usable clips: nothing can be trained until the errors above are fixed"]
    word = "clip" if n_clips == 1 else "clips"
    lo, hi = row.steps
    out = [f"{n_clips} {word}: {row.expectation}; steps {lo}-{hi} at batch {GUIDE_BATCH}, "
           f"rank {row.rank}, target {row.targets}"]
    if targets is None and config is not None:
        targets = config.target
    if targets is not None and n_clips < LINEAR1_MIN_CLIPS and any(
            t == "linear1" or t.endswith(".linear1") for t in targets):
        out.append(f"linear1 only pays off with {LINEAR1_MIN_CLIPS}+ clips ({n_clips} here): "
                   "drop it from the targets or expect overfitting")
    if config is not None:
        if config.steps < lo:
            out.append(f"steps {config.steps} is below the {lo}-{hi} suggested for {n_clips} "
                       f"{word}: the adapter may stay weak")
        elif config.steps > hi:
            out.append(f"steps {config.steps} is above the {lo}-{hi} suggested for {n_clips} "
                       f"{word}: watch the validation loss for overfitting")
        batch = config.batch_size * max(1, config.grad_accum)
        if batch != GUIDE_BATCH:
            out.append(f"the step range is for batch {GUIDE_BATCH}; at batch {batch} expect "
                       f"{'fewer' if batch > GUIDE_BATCH else 'more'} steps to the same loss "
                       "(judge by the smoothed loss flattening, not the step count)")
        if config.batch_size > n_clips:
            out.append(f"batch_size {config.batch_size} is larger than the {n_clips} {word}: "
                       "every batch repeats clips")
    if n_clips < 8:
        out.append("fewer than 8 clips: no clip is held out, so there is no validation loss; "
                   "compare checkpoint samples by ear")
    return out
