"""Dataset validation: one finding per listed problem, report formats, exit codes, advice."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from selva_engine.training.options import TrainConfig
from selvad.datasets import validate as V
from selvad.datasets.advice import ADVICE_TABLE, advise, row_for
from selvad.datasets.report import write_report

SR = 16000
VARIANT = "tiny_16k"


def npz(path: Path, clip=(1, 64, 1024), sync=(1, 192, 768), **extra) -> None:
    arrays = {"clip_features": np.full(clip, 0.5, np.float32),
              "sync_features": np.full(sync, 0.5, np.float32)}
    arrays.update(extra)
    np.savez(path, **arrays)


def wav(path: Path, seconds: float = 8.0, sr: int = SR, amp: float = 0.3, channels: int = 1,
        fmt: str | None = None, subtype: str | None = None, offset: float = 0.0) -> None:
    t = np.arange(int(seconds * sr)) / sr
    # a clean sound: a tone that swells and fades each second over a faint noise floor, so
    # the Inspector sees quiet moments (SNR estimate 26 dB) and a full band (no codec shelf)
    envelope = 0.05 + 0.95 * (np.sin(np.pi * t) ** 2)
    floor = amp * 1e-3 * np.random.default_rng(0).standard_normal(t.size)
    x = amp * envelope * np.sin(2 * np.pi * 220 * t) + floor + offset
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    sf.write(path, x.astype(np.float32), sr, format=fmt, subtype=subtype)


def dataset(root: Path, n: int = 7, prompt: str | None = "dog barking") -> Path:
    d = root / "dogs"
    d.mkdir()
    for i in range(n):
        extra = {} if prompt is None else {"prompt": np.array(prompt)}
        npz(d / f"c{i}.npz", duration=np.array(8.0), **extra)
        wav(d / f"c{i}.wav")
    return d


def codes(report) -> set[tuple[str, str, str]]:
    return {(f.severity, f.file, f.code) for f in report.findings}


def test_clean_dataset_is_ok(tmp_path):
    d = dataset(tmp_path)
    r = V.validate_dataset(d, VARIANT)
    assert r.ok and r.findings == []
    assert len(r.clips) == 7 and r.clips[0].prompt == "dog barking"
    assert r.clips[0].prompt_source == "npz"
    assert r.advice[0] == ("7 clips: expect underfit (a quick test; the guide's table starts at "
                           "10 clips); steps 2000-4000 at batch 4, rank 16, target attn.qkv")
    assert "OK: ready to train" in r.format_human()


def _pickled(d: Path) -> None:
    obj = np.empty(1, dtype=object)
    obj[0] = {"x": 1}
    npz(d / "c0.npz", prompt=obj)


def _truncate(p: Path, keep: float) -> None:
    b = p.read_bytes()
    p.write_bytes(b[: int(len(b) * keep)])


MUTATIONS = {
    "npz without audio": (lambda d: (d / "c0.wav").unlink(), ("error", "c0.npz", "missing-audio")),
    "audio without npz": (lambda d: (d / "c0.npz").unlink(),
                          ("warning", "c0.wav", "missing-features")),
    "several audio": (lambda d: wav(d / "c0.flac", fmt="FLAC"), ("error", "c0", "several-audio")),
    "missing key": (lambda d: np.savez(d / "c0.npz", clip_features=np.ones((1, 64, 1024))),
                    ("error", "c0.npz", "bad-features")),
    "wrong shape": (lambda d: npz(d / "c0.npz", clip=(1, 64, 1000)),
                    ("error", "c0.npz", "bad-features")),
    "pickled": (_pickled, ("error", "c0.npz", "pickled-data")),
    "nan": (lambda d: np.savez(d / "c0.npz", clip_features=np.full((1, 64, 1024), np.nan),
                               sync_features=np.ones((1, 192, 768))),
            ("error", "c0.npz", "bad-features")),
    "corrupt npz": (lambda d: _truncate(d / "c0.npz", 0.5), ("error", "c0.npz", "bad-features")),
    "text as wav": (lambda d: (d / "c0.wav").write_text("hello"), ("error", "c0.wav", "bad-audio")),
    "empty wav": (lambda d: (d / "c0.wav").write_bytes(b""), ("error", "c0.wav", "bad-audio")),
    "half-written wav": (lambda d: _truncate(d / "c0.wav", 0.5),
                         ("error", "c0.wav", "truncated-audio")),
    "silent": (lambda d: wav(d / "c0.wav", amp=0.0), ("error", "c0.wav", "silent")),
    "clipped": (lambda d: wav(d / "c0.wav", amp=1.5), ("warning", "c0.wav", "clipped")),
    "dc offset": (lambda d: wav(d / "c0.wav", amp=0.1, offset=0.2),
                  ("warning", "c0.wav", "dc-offset")),
    "stereo": (lambda d: wav(d / "c0.wav", channels=2), ("warning", "c0.wav", "mixed-to-mono")),
    "short": (lambda d: wav(d / "c0.wav", seconds=3.0), ("warning", "c0.wav", "short-audio")),
    "long": (lambda d: wav(d / "c0.wav", seconds=10.0), ("warning", "c0.wav", "long-audio")),
    "mp3": (lambda d: ((d / "c0.wav").unlink(), wav(d / "c0.mp3", fmt="MP3",
                                                    subtype="MPEG_LAYER_III")),
            ("warning", "c0.mp3", "lossy")),
    "features short": (lambda d: npz(d / "c0.npz", clip=(1, 40, 1024), prompt=np.array("dog barking")),
                       ("warning", "c0.npz", "clip-length")),
    "duration mismatch": (lambda d: npz(d / "c0.npz", duration=np.array(3.0),
                                        prompt=np.array("dog barking")),
                          ("warning", "c0.wav", "duration-mismatch")),
    "prompts no colon": (lambda d: (d / "prompts.txt").write_text("c0.npz dog\n"),
                         ("error", "prompts.txt", "prompts")),
    "prompts missing extension": (lambda d: (d / "prompts.txt").write_text("c0: dog\n"),
                                  ("error", "prompts.txt", "prompts-unknown-file")),
    "prompts not utf8": (lambda d: (d / "prompts.txt").write_bytes(b"c0.npz: caf\xe9\n"),
                         ("error", "prompts.txt", "prompts")),
    "prompts stale line": (lambda d: (d / "prompts.txt").write_text("gone.npz: dog\n"),
                           ("warning", "prompts.txt", "prompts-unknown-file")),
    "inconsistent prompt": (lambda d: npz(d / "c0.npz", prompt=np.array("dog barkign")),
                            ("warning", "c0.npz", "inconsistent-prompt")),
    "empty prompt": (lambda d: npz(d / "c0.npz", prompt=np.array("")),
                     ("warning", "c0.npz", "empty-prompt")),
    "directory-name fallback": (lambda d: (npz(d / "c0.npz", duration=np.array(8.0)),
                                           (d / "prompts.txt").write_text("c1.npz: dog\n")),
                                ("warning", "", "mixed-prompt-sources")),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_each_problem_is_reported(tmp_path, name):
    d = dataset(tmp_path)
    mutate, expected = MUTATIONS[name]
    mutate(d)
    r = V.validate_dataset(d, VARIANT)
    assert expected in codes(r), r.format_human()
    assert r.ok == (expected[0] == "warning")
    finding = next(f for f in r.findings if f.code == expected[2])
    assert finding.message and finding.fix


def test_low_rate_and_phase_cancel(tmp_path):
    d = dataset(tmp_path)
    t = np.arange(SR * 8) / SR
    x = 0.3 * np.sin(2 * np.pi * 220 * t)
    sf.write(d / "c1.wav", np.stack([x, -x], 1), SR)  # L = -R: the mono mix is silence
    sf.write(d / "c2.wav", np.stack([x, -0.6 * x], 1), SR)  # partly cancels: -16 dB
    r = V.validate_dataset(d, "tiny_44k")  # the 16 kHz clips are below 44.1 kHz
    got = codes(r)
    assert ("warning", "c0.wav", "low-sample-rate") in got
    assert ("error", "c1.wav", "phase-cancel") in got and not r.ok
    assert "c1" not in {c.stem for c in r.clips}
    assert ("warning", "c2.wav", "phase-cancel") in got and "c2" in {c.stem for c in r.clips}
    assert r.num_audio_frames == 353280 and r.sampling_rate == 44100


def test_eight_seconds_at_44k_is_not_flagged_short(tmp_path):
    d = dataset(tmp_path, n=1)
    wav(d / "c0.wav", sr=44100)
    assert V.validate_dataset(d, "tiny_44k").findings == []


def test_empty_and_missing_directories(tmp_path):
    r = V.validate_dataset(tmp_path, VARIANT)
    assert ("error", "", "empty-dataset") in codes(r)
    assert "export features with the SelVA Feature Extractor" in r.format_human()
    assert r.advice[0].startswith("0 usable clips")
    r = V.validate_dataset(tmp_path / "nope", VARIANT)
    assert ("error", "", "missing-directory") in codes(r) and not r.ok


def test_unexpected_exception_becomes_a_finding(tmp_path, monkeypatch):
    d = dataset(tmp_path, n=2)

    def boom(path, **_):
        raise MemoryError("simulated")

    monkeypatch.setattr(V, "scan_audio", boom)
    r = V.validate_dataset(d, VARIANT)
    assert ("error", "c0.wav", "bad-audio") in codes(r) and len(r.clips) == 0


def test_prompts_priority_in_report(tmp_path):
    d = dataset(tmp_path, n=3, prompt=None)
    (d / "prompts.txt").write_text("c0.npz: a dog\nc1.npz: a dog\nc2.npz: a dog\n")
    r = V.validate_dataset(d, VARIANT)
    assert {c.prompt_source for c in r.clips} == {"prompts.txt"} and r.findings == []
    (d / "prompts.txt").unlink()
    r = V.validate_dataset(d, VARIANT)
    assert {(c.prompt, c.prompt_source) for c in r.clips} == {("dogs", "directory")}


def test_report_formats(tmp_path):
    d = dataset(tmp_path)
    (d / "c0.wav").write_text("junk")
    wav(d / "c1.wav", seconds=4.0)
    r = V.validate_dataset(d, VARIANT)
    data = tomllib.loads(r.to_toml())
    assert data["ok"] is False and data["error_count"] == 1 and data["warning_count"] == 2  # short + duration
    assert data["errors"][0]["file"] == "c0.wav" and data["clip_count"] == 6
    assert data["variant"] == VARIANT and data["num_audio_frames"] == 128000
    assert json.loads(r.to_json()) == data
    text = r.format_human()
    assert text.index("c0.wav\n  error:") < text.index("c1.wav\n  SNR")
    assert "FAILED: 1 error(s)" in text
    p = write_report(r, tmp_path / "run" / "validation.toml")
    assert tomllib.loads(p.read_text()) == data
    p = write_report(r, tmp_path / "run" / "validation.json")
    assert json.loads(p.read_text()) == data
    assert sorted(x.name for x in p.parent.iterdir()) == ["validation.json", "validation.toml"]


def test_main_exit_codes(tmp_path, capsys):
    d = dataset(tmp_path)
    assert V.main([str(d), "--variant", VARIANT]) == 0
    assert "7 usable clip(s)" in capsys.readouterr().out
    (d / "c0.wav").unlink()
    out_file = tmp_path / "v.toml"
    assert V.main([str(d), "--variant", VARIANT, "--json", "--output", str(out_file)]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["errors"][0]["code"] == "missing-audio"
    assert tomllib.loads(out_file.read_text())["ok"] is False
    with pytest.raises(SystemExit) as exc:
        V.main([str(d), "--variant", "nope"])
    assert exc.value.code == 2


def test_main_advice_flags(tmp_path, capsys):
    d = dataset(tmp_path, n=3)
    V.main([str(d), "--variant", VARIANT, "--target", "attn.qkv", "linear1", "--steps", "500"])
    out = capsys.readouterr().out
    assert "linear1 only pays off with 150+ clips" in out and "steps 500 is below" in out


# ---------------------------------------------------------------- advice table

def test_advice_table_is_contiguous():
    for a, b in zip(ADVICE_TABLE, ADVICE_TABLE[1:], strict=False):
        assert b.min_clips == a.max_clips + 1
    assert ADVICE_TABLE[-1].max_clips is None and row_for(0) is None


@pytest.mark.parametrize("n,expected", [
    (1, "1 clip: expect memorisation"),
    (4, "4 clips: expect memorisation"),
    (7, "7 clips: expect underfit"),
    (10, "10 clips: enough for a style adapter of a sound the model knows; steps 2000-4000 at batch 4"),
    (19, "19 clips: enough for a style adapter of a sound the model knows; steps 2000-4000"),
    (20, "20 clips: enough for a usable adapter; steps 4000-8000 at batch 4"),
    (49, "49 clips: enough for a usable adapter; steps 4000-8000"),
    (50, "50 clips: enough for a solid adapter; steps 6000-15000"),
    (100, "100 clips: enough for a solid adapter"),
    (150, "150 clips: the linear1 target pays off"),
])
def test_advice_rows(n, expected):
    assert advise(n)[0].startswith(expected)


def test_advice_with_config():
    cfg = TrainConfig(target=("attn.qkv", "linear1"), steps=9000, batch_size=16)
    lines = advise(10, cfg)
    assert any("linear1 only pays off with 150+ clips (10 here)" in a for a in lines)
    assert any("steps 9000 is above the 2000-4000" in a for a in lines)
    assert any("batch_size 16 is larger than the 10 clips" in a for a in lines)
    assert not any("linear1 only" in a for a in advise(200, cfg))
    assert any("linear1 only" in a for a in advise(20, targets=["joint_blocks.0.linear1"]))
    assert not any("held out" in a for a in advise(8))


def test_advice_quotes_batch_4_and_says_when_the_batch_differs():
    lines = advise(30, TrainConfig(steps=5000, batch_size=16))
    assert any("step range is for batch 4; at batch 16 expect fewer steps" in a for a in lines)
    assert not any("step range is for batch" in a for a in advise(30, TrainConfig(steps=5000)))
    assert not any("steps 5000 is" in a for a in advise(30, TrainConfig(steps=5000)))


def test_partial_prompts_txt_is_fine(tmp_path):
    """The guide's own prompts.txt example overrides only some clips; the rest keep the prompt
    embedded in their .npz. That is no warning."""
    d = dataset(tmp_path)
    (d / "prompts.txt").write_text("# One line per file: filename: prompt text\n"
                                   "c1.npz: a large dog barking aggressively\n")
    r = V.validate_dataset(d, VARIANT)
    assert r.ok and r.findings == [], r.format_human()
    assert {c.prompt_source for c in r.clips} == {"npz", "prompts.txt"}


def test_event_padded_with_silence_on_purpose_is_fine(tmp_path):
    """A 1 s bark centred in 8 s of silence (the guide's advice for short events) is clean; a
    1 s file (padded at the end by the loader) is told to centre its event."""
    d = dataset(tmp_path)
    x = np.zeros(8 * SR, np.float32)
    t = np.arange(SR) / SR
    x[int(3.5 * SR):int(4.5 * SR)] = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(d / "c0.wav", x, SR)
    r = V.validate_dataset(d, VARIANT)
    assert r.ok and r.findings == [], r.format_human()
    wav(d / "c1.wav", seconds=1.0)
    r = V.validate_dataset(d, VARIANT)
    short = [f for f in r.findings if f.code == "short-audio"]
    assert short and "centred" in short[0].fix and "padded at the end" in short[0].message


def test_validate_resolves_a_dataset_name_through_the_config(make_config, tmp_path, monkeypatch,
                                                             capsys) -> None:
    """The command `init-job` suggests (`selvad validate NAME --config FILE`) works from any
    directory: NAME is looked up in the config's dataset roots."""
    from selvad.datasets.validate import main
    from tests.conftest import write_clip

    config = make_config("")
    write_clip(tmp_path / "datasets" / "birds", "c0", freq=440.0, seed=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("SELVAD_CONFIG", raising=False)
    assert main(["birds", "--variant", "tiny_16k", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"Dataset {tmp_path / 'datasets' / 'birds'}" in out and "ready to train" in out
    assert main(["nosuch", "--variant", "tiny_16k", "--config", str(config)]) == 1  # empty
    assert main(["../x", "--variant", "tiny_16k", "--config", str(config)]) == 2
    assert "not a directory" in capsys.readouterr().err
