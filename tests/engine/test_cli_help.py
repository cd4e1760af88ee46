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


def test_variant_help_lists_every_variant_and_resume_names_the_new_final() -> None:
    from selva_engine.model.variants import variant_names

    text = " ".join(build_train_parser().format_help().split())
    for name in variant_names(include_tiny=True):
        assert name in text.split("--variant", 2)[2][:400], name
    assert "keeps the earlier adapter_final.pt and writes this run's as adapter_final_001.pt" in text


def test_train_lines_never_print_raw_floats_or_a_zero_eta() -> None:
    from selva_engine.cli import _human

    done = _human({"event": "extract_done", "seconds": 11.781822141000248, "clips": 4})
    assert done == "extract_done: seconds=11.8 s, clips=4"
    last = _human({"event": "progress", "step": 20, "steps": 20, "loss": 0.5, "smoothed_loss": 0.5,
                   "lr": 1e-4, "grad_norm": 0.1, "samples_per_s": 3.0, "eta_s": 0.0})
    assert "ETA 0m00s" not in last and "last checkpoint and sample next" in last
    again = _human({"event": "done", "step": 20, "adapter": "/r/adapter_final_001.pt"})
    assert "adapter_final.pt of the earlier run in this folder is kept" in again
    assert "adapter_final_001.pt" in again


def test_sample_without_a_weights_directory_says_so(tmp_path, monkeypatch, capsys) -> None:
    from selva_engine.cli import sample_main

    monkeypatch.delenv("SELVA_DIR", raising=False)
    assert sample_main(["--npz", str(tmp_path / "x.npz"), "--output", str(tmp_path / "o.wav"),
                        "--selva_dir", ""]) == 2
    assert "no weights directory was given; pass --selva_dir DIR" in capsys.readouterr().err
