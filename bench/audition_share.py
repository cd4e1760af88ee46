"""Measure: the share of a training run's time its checkpoint auditions took (issue 24: at most 10 %
at the guide's defaults, save_every 500 and batch 4).

Reads a run directory's `progress.jsonl`: each checkpoint record carries `audition_s`, the wall
seconds that checkpoint spent rendering its audition videos (selva_engine.training.audition).
The run's training time is the span from its first record to its last checkpoint record (the
step loop with its checkpoints; extraction before it is left out). Prints one line per
checkpoint and the last line `audition share: X.X %` (sum of audition_s / that span).

    python bench/audition_share.py RUN_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_records(run_dir: Path) -> list[dict]:
    """The whole JSON records of `run_dir/progress.jsonl` (a torn line is skipped)."""
    records = []
    for line in (run_dir / "progress.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "time" in record:
            records.append(record)
    return records


def audition_share(records: list[dict]) -> tuple[float, float, list[tuple[int, float]]]:
    """(audition seconds, training seconds, [(checkpoint step, audition_s)]) of a run's records."""
    checkpoints = [r for r in records if r.get("event") == "checkpoint"]
    if not checkpoints:
        raise ValueError("the run has no checkpoint record yet; wait for its first checkpoint")
    per = [(int(r["step"]), float(r.get("audition_s", 0.0))) for r in checkpoints]
    span = float(checkpoints[-1]["time"]) - float(records[0]["time"])
    return sum(s for _, s in per), span, per


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory holding progress.jsonl")
    args = parser.parse_args(argv)
    try:
        spent, span, per = audition_share(read_records(args.run_dir))
    except (OSError, ValueError) as exc:
        print(f"audition_share: {exc}", file=sys.stderr)
        return 2
    for step, seconds in per:
        print(f"step {step:>7}: auditions {seconds:8.2f} s")
    print(f"training {span:.1f} s, auditions {spent:.1f} s")
    print(f"audition share: {100 * spent / max(span, 1e-9):.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
