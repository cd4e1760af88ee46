"""The train/validation split of a run whose clips may include `[augment]` variants.

The split is decided on the original clips alone, exactly as `split_clips` decides it for a
run without variants (same count, seed and order, so turning augmentation on never changes
which clips are held out). Then each variant follows its original: a variant of a training
clip is a training clip, a variant of a held-out clip is never used at all (extraction makes
none, and this split drops any it is given), so no held-out audio leaks into training. With
`keep_originals` false the training originals are left out and only their variants train.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from selva_engine.training.loop import split_clips

__all__ = ["split_with_variants"]


def split_with_variants(clips: Sequence[Any], val_clips: int | None, seed: int,
                        keep_originals: bool = True) -> tuple[list[int], list[int]]:
    """(train indices, validation indices) into `clips` (objects with `stem` and, for a
    variant, `origin`: its original's stem; a clip without `origin` is an original).

    Training: the training originals (unless `keep_originals` is false), then the variants
    of training originals, in `clips` order. Validation: held-out originals only. Raises
    TrainError (from `split_clips`) when `val_clips` leaves no original to train on.
    """
    originals = [i for i, c in enumerate(clips) if not getattr(c, "origin", "")]
    train_o, val_o = split_clips([clips[i] for i in originals], val_clips, seed)
    kept = {clips[originals[i]].stem for i in train_o}
    variants = [i for i, c in enumerate(clips) if getattr(c, "origin", "") in kept]
    train = ([originals[i] for i in train_o] if keep_originals or not variants else []) + variants
    return train, [originals[i] for i in val_o]
