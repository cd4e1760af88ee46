"""`selva-train --help` reads like the guide's CLI table: every flag has a help line and its
default, and the step table is printed below the flags."""

from __future__ import annotations

import subprocess
import sys

from selva_engine.cli import build_train_parser


def test_every_train_flag_has_help_and_shows_its_default() -> None:
    parser = build_train_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help and action.help.strip(), f"{action.option_strings} has no help line"
    text = parser.format_help()
    assert "(default: 16)" in text and "(default: 0.0001)" in text and "(default: 2000)" in text
    assert "(default: large_44k)" in text


def test_train_help_prints_the_guides_step_table() -> None:
    out = subprocess.run([sys.executable, "-m", "selva_engine.cli", "train", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    flat = " ".join(out.stdout.split())
    assert "10-20 clips 2000-4000" in flat and "50+ clips 6000-15000" in flat
    assert "--rank RANK LoRA rank" in flat
