"""Dataset validation: every file of a clip directory checked, findings reported, never a crash.

Errors (block training): missing directory or no `.npz`; an `.npz` without audio; several
audio files for one stem; a clip file or prompts.txt that is not a regular file (FIFO,
socket, device, directory), a link that leads out of the dataset directory or a broken one,
a file that cannot be read (each such file is never opened); a bad `.npz` (corrupt,
half-written, pickled objects, missing keys, wrong shapes or rank, non-float features,
NaN/inf) or one whose arrays declare more than 10x the clip's frames (a compressed bomb: the
header is checked before anything is loaded); audio that is unreadable, not audio, empty,
half-written (WAV data chunk shorter than its header says) or silent (peak < 1e-4: training
on silence teaches silence); audio at another rate than the model's while torchaudio's
resampler cannot load (see selva_engine.audio.stack); `prompts.txt` that is not UTF-8, has
a line without ':', names a path instead of a plain file name ('/', '\\', '..', NUL), or
names a clip without its `.npz` extension (e.g. `dog_001:` or `dog_001.wav:` when
`dog_001.npz` exists: that clip would silently lose its prompt).

Warnings (do not block): audio without `.npz` (ignored: harmless, it is just not trained
on); a `prompts.txt` line naming no clip at all (stale); clipping (> 0.1 % of samples at
|x| >= 0.999); DC offset (|mean| > 0.05); a sample rate below the model's; several
channels mixed to mono (and channels that cancel when averaged); audio or features
shorter (zero-padded) or longer (trimmed) than the clip length by more than 50 ms; audio
and feature durations that differ by more than 0.5 s; lossy formats (.mp3,
.ogg/Vorbis/Opus); empty prompts; inconsistent prompts (see `_check_prompts`). Repeated
findings of one kind are summarised (see `selvad.datasets.report`). Advice comes from
`selvad.datasets.advice`.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from selva_engine.audio.files import AudioScan, scan_audio
from selva_engine.audio.inspect import find_issues, inspect_mono
from selva_engine.audio.stack import check_audio_stack
from selva_engine.data.dataset import (
    LOSSY_SUFFIXES,
    PROMPTS_FILE,
    ClipFeatures,
    DatasetError,
    HiddenClipError,
    OrphanAudioError,
    PromptEntryError,
    find_pairs,
    load_features,
    read_prompts,
)
from selva_engine.io import open_regular
from selva_engine.model.variants import SequenceConfig, Variant, get_variant, variant_names
from selva_engine.training.options import TrainConfig
from selvad.config.daemon import default_config_path, load_config
from selvad.config.jobs import resolve_dataset
from selvad.config.schema import ConfigError
from selvad.datasets.advice import advise
from selvad.datasets.datasetfile import (
    DATASET_FILE,
    augment_problems,
    inspect_thresholds,
    prepare_problems,
    read_dataset_file,
)
from selvad.datasets.report import (
    ERROR,
    WARNING,
    ClipEntry,
    Finding,
    ValidationReport,
    write_report,
)
from selvad.datasets.video_validate import check_auditions, check_videos

__all__ = ["Finding", "ValidationReport", "main", "validate_dataset", "write_report"]

SILENT_PEAK = 1e-4  # full scale = 1.0
FLOAT_OVER_LIMIT = 4.0  # +12 dBFS: float samples beyond are not a mix's overs but garbage
CANCEL_ERROR_DB = -30.0  # mono mix this far under its channels: it trains on near silence
CANCEL_WARN_DB = -6.0
CLIP_FRACTION = 0.001  # of all samples
DC_LIMIT = 0.05
LENGTH_TOLERANCE_S = 0.05  # 44k's 353280 samples are 8.011 s: an 8.000 s file is fine
DURATION_MISMATCH_S = 0.5
LONG_PROMPT_CHARS = 2000  # far beyond CLIP's 77 tokens
LOSSY_SUBTYPES = frozenset({"VORBIS", "OPUS", "MPEG_LAYER_I", "MPEG_LAYER_II", "MPEG_LAYER_III"})
_REEXPORT = "re-export the clip as 16/24-bit PCM WAV or FLAC"
HELP_RULES = """\
Errors block training; warnings do not. The rule: what would teach the model something
wrong, or cannot be read safely, is an error; what is only ignored is a warning.
  - a silent clip is an error (training on silence teaches silence); so are a missing,
    corrupt or half-written audio file or .npz, an .npz without audio, several audio
    files for one clip, and .npz arrays far larger than a clip (> 10x its frames)
  - an audio file without its .npz is a warning: it is harmless and simply not trained on
  - files that are not regular files (FIFOs, devices, directories named like a clip),
    links out of the dataset directory and unreadable files are errors and never opened
  - prompts.txt names must be plain .npz file names of the dataset (no paths), or a
    video's file name (clip.mp4:)
  - videos (.mp4 .mov .mkv .webm .avi) are clips: stem.wav beside one is its clean
    recording, else its own sound track is used (a warning); a video that is not a video,
    has no picture or frames, declares absurd sizes, does not decode or has no sound at all
    is an error; dataset.toml [video] sets split, mask_strength, mask_clip, mask_sync
Repeated findings of one kind are summarised: the first 5 warnings (20 errors) are
listed, then "... and N more like this".
Exit status: 0 when nothing blocks training, 1 when there are errors.
"""


def _wav_missing_bytes(path: Path, root: Path) -> int:
    """Bytes the WAV `data` chunk declares beyond the end of the file (0 when complete)."""
    with open_regular(path, root) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return 0
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            cid, csize = struct.unpack("<4sI", f.read(8))
            if cid == b"data":
                if csize in (0, 0xFFFFFFFF):  # streaming writers leave the size open
                    return 0
                return max(0, pos + 8 + csize - size)
            pos += 8 + csize + (csize & 1)
    return 0


def _check_audio(report: ValidationReport, rel: str, path: Path,
                 npz_duration: float | None) -> bool:
    """Analyse one audio file (one blockwise read); add findings; return False when it blocks."""
    model_sr = report.sampling_rate
    target_s = report.num_audio_frames / model_sr
    root = path.parent  # the dataset directory: nothing outside it is opened
    try:
        scan = scan_audio(path, max_seconds=target_s + 1.0, root=root)  # the part trained on
    except DatasetError as err:
        report.add(ERROR, rel, err.code, err.problem, err.fix)
        return False
    usable = True
    if path.suffix.lower() == ".wav" and (missing := _wav_missing_bytes(path, root)) > 0:
        report.add(ERROR, rel, "truncated-audio", f"half-written or truncated: {missing} bytes "
                   "of audio data are missing", "copy the file again completely")
        usable = False
    usable = _check_levels(report, rel, scan) and usable
    usable = _check_channels(report, rel, scan) and usable
    if scan.sampling_rate != model_sr and not (stack := check_audio_stack()).ok:
        report.add(ERROR, rel, "cannot-resample",
                   f"needs resampling from {scan.sampling_rate} Hz to {model_sr} Hz, but "
                   f"{stack.problem}", stack.fix)
        usable = False
    if scan.sampling_rate < model_sr:
        report.add(WARNING, rel, "low-sample-rate",
                   f"sample rate {scan.sampling_rate} Hz is below the model's {model_sr} Hz: "
                   f"nothing above {scan.sampling_rate // 2} Hz to learn",
                   f"use a source recorded at {model_sr} Hz or more if you have one")
    _check_lengths(report, rel, scan.duration, npz_duration)
    if path.suffix.lower() in LOSSY_SUFFIXES or scan.subtype in LOSSY_SUBTYPES:
        report.add(WARNING, rel, "lossy", f"lossy format ({scan.format}/{scan.subtype}): "
                   "compression artefacts are learned too", "use WAV or FLAC if you have it")
    if usable:
        _inspect(report, rel, scan)
    return usable


def _check_levels(report: ValidationReport, rel: str, scan: AudioScan) -> bool:
    """Silence and float samples far beyond full scale are errors; clipping and DC warnings."""
    usable = True
    if scan.peak < SILENT_PEAK:
        report.add(ERROR, rel, "silent", f"silent (peak {scan.peak:.1e} < {SILENT_PEAK:g})",
                   "replace the clip or remove it; training on silence teaches silence")
        usable = False
    if scan.peak > FLOAT_OVER_LIMIT:
        report.add(ERROR, rel, "out-of-range", f"float samples reach {scan.peak:.3g}, "
                   f"{20 * np.log10(scan.peak):.0f} dB above full scale (at most "
                   f"{FLOAT_OVER_LIMIT:g} is accepted): the model would learn garbage",
                   "normalise the file to peak at or below 1.0 (0 dBFS) and export it again")
        usable = False
    elif scan.over:
        report.add(WARNING, rel, "over-full-scale", f"{scan.over / scan.samples:.2%} of float "
                   f"samples exceed full scale (peak {scan.peak:.2f})",
                   "normalise the file to peak at or below 1.0 (0 dBFS)")
    clipped = scan.clipped / scan.samples
    if clipped > CLIP_FRACTION:
        report.add(WARNING, rel, "clipped", f"clipped: {clipped:.2%} of samples at full scale",
                   "re-export with lower gain; the model learns the distortion")
    dc = float(scan.mono.mean(dtype=np.float64))
    if abs(dc) > DC_LIMIT:
        report.add(WARNING, rel, "dc-offset", f"DC offset {dc:+.3f}",
                   "apply a high-pass filter / remove DC before exporting")
    return usable


def _check_channels(report: ValidationReport, rel: str, scan: AudioScan) -> bool:
    """Several channels are mixed to mono (a warning); channels that cancel in the mix so
    that it is far quieter than they are would teach silence (an error)."""
    if scan.channels == 1:
        return True
    report.add(WARNING, rel, "mixed-to-mono", f"{scan.channels} channels are averaged to mono",
               "export mono to hear what the model is trained on")
    if scan.peak < SILENT_PEAK or scan.channel_rms <= 0.0:
        return True
    level = 20 * np.log10(max(scan.mono_rms, 1e-12) / scan.channel_rms)
    fix = "flip the polarity of one channel, or export one channel"
    if level < CANCEL_ERROR_DB:
        report.add(ERROR, rel, "phase-cancel", "channels cancel when averaged to mono (mono "
                   f"level {level:.1f} dB, below {CANCEL_ERROR_DB:g} dB): the model would "
                   "train on near silence", fix)
        return False
    if level < CANCEL_WARN_DB:
        report.add(WARNING, rel, "phase-cancel", "channels partly cancel when averaged to mono "
                   f"(mono level {level:.1f} dB)", fix)
    return True


def _check_lengths(report: ValidationReport, rel: str, seconds: float,
                   npz_duration: float | None) -> None:
    """Audio shorter or longer than the clip, and audio/feature durations that differ."""
    target_s = report.num_audio_frames / report.sampling_rate
    if seconds < target_s - LENGTH_TOLERANCE_S:
        report.add(WARNING, rel, "short-audio", f"{seconds:.2f} s long: zero-padded at the "
                   f"end to {report.duration:g} s, so the sound sits at the start",
                   "for a short event, pad it with silence before and after so the event is "
                   "centred (or loop it 2-3 times), as the guide advises; a full-length clip "
                   "with deliberate silence around the event is fine")
    elif seconds > target_s + LENGTH_TOLERANCE_S:
        report.add(WARNING, rel, "long-audio", f"{seconds:.2f} s long: only the first "
                   f"{report.duration:g} s are used", "cut the clip to the part you want")
    if npz_duration is not None and abs(npz_duration - seconds) > DURATION_MISMATCH_S:
        report.add(WARNING, rel, "duration-mismatch", f"audio is {seconds:.2f} s but its "
                   f"features cover {npz_duration:.2f} s", "check both come from the same video")


def _inspect(report: ValidationReport, rel: str, scan: AudioScan) -> None:
    """The Inspector's figures of the trained part (the first clip length); its flags are
    warnings, and the clip is listed as rejected when the dataset skips flagged clips."""
    part = scan.mono[:max(1, round(report.duration * scan.sampling_rate))]
    figures = inspect_mono(part, scan.sampling_rate, peak=scan.peak)
    report.inspection[rel] = figures.to_dict()
    issues = find_issues(figures, report.thresholds)
    for code, message, fix in issues:
        report.add(WARNING, rel, code, message, fix)
    if issues:
        report.flagged.append(Path(rel).stem)


def _check_prompts(report: ValidationReport) -> None:
    """Flag prompt inconsistencies of the usable clips.

    Rules: (1) a partial prompts.txt is fine (the guide's own example overrides only some
    clips; the rest keep their .npz prompt), but clips that fall back to the directory name
    while others have a prompt are a dataset warning, since a forgotten line is the likely
    cause; (2) an empty
    prompt is a per-clip warning; (3) when more than half of the clips (and at least 3) share
    one prompt, each clip with another prompt gets a warning (a typo or a leftover), except a line of a partial prompts.txt. A
    dataset where every clip has its own prompt is fine.
    """
    clips = report.clips
    sources = Counter(c.prompt_source for c in clips)
    if len(sources) > 1 and sources.get("directory"):
        parts = ", ".join(f"{n} from {s}" for s, n in sorted(sources.items()))
        report.add(WARNING, "", "mixed-prompt-sources", f"{sources['directory']} clips have no "
                   f"prompt of their own and use the directory name ({parts})",
                   f"give those clips a line in {PROMPTS_FILE}")
    for c in clips:
        if len(c.prompt) > LONG_PROMPT_CHARS:
            report.add(WARNING, f"{c.stem}.npz", "long-prompt", f"the prompt has "
                       f"{len(c.prompt):,} characters; the text encoder reads only its first "
                       "77 tokens (a few hundred characters)", "put what matters first, or "
                       "shorten it")
        if not c.prompt.strip():
            report.add(WARNING, f"{c.stem}.npz", "empty-prompt", "the prompt is empty (the "
                       "text stream gets no description)", f"add '{c.stem}.npz: ...' to "
                       f"{PROMPTS_FILE}")
    counts = Counter(c.prompt for c in clips)
    if not counts:
        return
    top, n_top = counts.most_common(1)[0]
    # a partial prompts.txt overrides some clips on purpose: those lines are not typos
    partial = 0 < sources.get(PROMPTS_FILE, 0) < len(clips)
    if n_top >= 3 and n_top * 2 > len(clips) and len(counts) > 1:
        for c in clips:
            if c.prompt != top and not (partial and c.prompt_source == PROMPTS_FILE):
                report.add(WARNING, f"{c.stem}.npz", "inconsistent-prompt",
                           f"prompt {c.prompt!r} differs from the one of {n_top} of "
                           f"{len(clips)} clips ({top!r})",
                           f"make it match in {PROMPTS_FILE} if it is a typo")


def _add_prompt_problems(report: ValidationReport, problems: list[DatasetError]) -> None:
    """prompts.txt problems: a stale line (it names no clip at all) is a warning, the rest
    errors (a path as a name, a clip named without `.npz`, a broken line or file)."""
    for perr in problems:
        line = perr.path.name.rpartition(":")[2]
        where = f"line {line}: " if line.isdigit() else ""
        severity = ERROR
        if isinstance(perr, PromptEntryError) and perr.suggestion is None:
            severity = WARNING  # a stale line: the clip it named is gone
        report.add(severity, PROMPTS_FILE, perr.code, where + perr.problem, perr.fix)


def _check_features(report: ValidationReport, directory: Path, npz_path: Path,
                    variant: Variant, seq: SequenceConfig) -> ClipFeatures | None:
    """Load one `.npz` (header-checked, inside `directory`); add findings; None if bad."""
    rel = npz_path.name
    try:
        feats = load_features(npz_path, variant, seq.duration, root=directory)
    except DatasetError as err:
        report.add(ERROR, rel, err.code, err.problem, err.fix)
        return None
    except Exception as exc:  # never crash on bad input
        report.add(ERROR, rel, "bad-features", f"unexpected error: {exc!r}",
                   "re-export the clip with the SelVA Feature Extractor node")
        return None
    for what, got, want in (("clip", feats.clip_frames, seq.clip_seq_len),
                            ("sync", feats.sync_frames, seq.sync_seq_len)):
        if got != want:
            action = "zero-padded" if got < want else "truncated"
            report.add(WARNING, rel, f"{what}-length", f"{what}_features has {got} frames, "
                       f"{action} to {want} ({seq.duration:g} s)",
                       "extract features at the clip length")
    return feats


def _check_dataset(report: ValidationReport, directory: Path, variant: Variant,
                   seq: SequenceConfig, progress: Callable[[int, int], None] | None,
                   video: dict | None = None) -> None:
    pairs, pair_problems = find_pairs(directory)
    for err in pair_problems:
        severity = WARNING if isinstance(err, (OrphanAudioError, HiddenClipError)) else ERROR
        report.add(severity, err.path.name, err.code, err.problem, err.fix)
    prompts, prompt_problems = read_prompts(directory)
    _add_prompt_problems(report, prompt_problems)
    npz_names = [e.name for e in os.scandir(directory) if e.name.lower().endswith(".npz")
                 and not e.name.startswith(".")]
    videos = check_videos(report, directory, prompts, {os.path.splitext(n)[0] for n in npz_names},
                          _check_audio, video)
    check_auditions(report, directory)
    if not npz_names and not videos:
        report.add(ERROR, "", "empty-dataset", "no .npz files in this directory and no videos",
                   "put videos (stem.mp4, with the clean recording stem.wav beside each) in it, "
                   "or export features with the SelVA Feature Extractor node (one stem.npz per "
                   "clip) and put each clip's audio next to it")
    for done, pair in enumerate(pairs, 1):
        if progress is not None:
            progress(done, len(pairs))
        feats = _check_features(report, directory, pair.npz_path, variant, seq)
        audio_rel = pair.audio_path.name
        try:
            audio_ok = _check_audio(report, audio_rel, pair.audio_path,
                                    feats.duration if feats is not None else None)
        except Exception as exc:  # never crash on bad input
            report.add(ERROR, audio_rel, "bad-audio", f"unexpected error: {exc!r}", _REEXPORT)
            audio_ok = False
        if feats is None or not audio_ok:
            continue
        npz_rel = pair.npz_path.name
        if npz_rel in prompts:
            report.clips.append(ClipEntry(pair.stem, prompts[npz_rel], PROMPTS_FILE))
        elif feats.npz_prompt is not None:
            report.clips.append(ClipEntry(pair.stem, feats.npz_prompt, "npz"))
        else:
            report.clips.append(ClipEntry(pair.stem, directory.resolve().name, "directory"))
    if report.thresholds.skip_rejected:
        _skip_flagged(report)
    _check_prompts(report)


def _skip_flagged(report: ValidationReport) -> None:
    """`skip_rejected`: the usable clips the Inspector flags are left out of training."""
    flagged = set(report.flagged)
    report.skipped = sorted(c.stem for c in report.clips if c.stem in flagged)
    report.clips = [c for c in report.clips if c.stem not in flagged]
    if report.skipped and not report.clips:
        report.add(ERROR, "", "all-skipped", f"skip_rejected leaves none of the "
                   f"{len(report.skipped)} clips to train on: the Inspector flags them all",
                   "fix the clips, or loosen the thresholds in dataset.toml's [inspect]")
    elif report.skipped:
        report.add(WARNING, "", "skipped-flagged", f"{len(report.skipped)} flagged clip(s) are "
                   "left out of training (skip_rejected = true)", "fix or replace them, or set "
                   "skip_rejected = false in [inspect] to train on them")


def validate_dataset(directory: Path | str, variant: Variant | str = "large_44k",
                     sequence: SequenceConfig | None = None, config: TrainConfig | None = None,
                     targets: Sequence[str] | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     inspect: dict[str, Any] | None = None) -> ValidationReport:
    """Check every file of a dataset directory for `variant`; return the report.

    `sequence` overrides the variant's 8 s sequence config (clip length, rate, sample count);
    `config`/`targets` (a job's TrainConfig and LoRA targets) refine the advice. Reads each
    file once; any exception becomes an error finding, so this never raises on bad input
    (only on an unknown variant name: ValueError). No side effects, except that
    `progress(done, total)` is called as each clip is checked. The Inspector's thresholds
    come from the dataset's `dataset.toml` `[inspect]`, overridden by `inspect` (a job's
    `[inspect]` table); a bad value there is an error finding of `dataset.toml`.
    """
    var = get_variant(variant) if isinstance(variant, str) else variant
    seq = sequence or var.sequence()
    directory = Path(directory)
    report = ValidationReport(
        dataset=str(directory), variant=var.name, sampling_rate=seq.sampling_rate,
        duration=seq.duration, num_audio_frames=seq.num_audio_frames,
        checked_at=datetime.now(UTC).isoformat(timespec="seconds"))
    if not directory.is_dir():
        report.add(ERROR, "", "missing-directory", "dataset directory does not exist",
                   "create it and put stem.npz + stem.wav pairs in it")
    else:
        tables, problems = read_dataset_file(directory)
        report.thresholds, more = inspect_thresholds(tables, directory / DATASET_FILE, inspect)
        more += prepare_problems(tables, directory / DATASET_FILE)
        more += augment_problems(tables, directory / DATASET_FILE)
        prefix = f"{directory / DATASET_FILE}:"
        for message in problems + more:
            problem, _, fix = message.removeprefix(prefix).strip().partition(" (fix: ")
            report.add(ERROR, DATASET_FILE, "bad-dataset-file", problem,
                       fix.removesuffix(")") or "fix the key, or delete it to use the default")
        try:
            _check_dataset(report, directory, var, seq, progress)
        except Exception as exc:  # e.g. permission denied listing the directory
            report.add(ERROR, "", "unreadable-directory", f"cannot check the dataset: {exc!r}",
                       "check the directory's permissions")
    report.advice = advise(len(report.clips), config, targets)
    return report


def dataset_directory(value: str, config_path: str | None) -> Path | str:
    """The directory `selvad validate` checks: `value` itself when it is a directory (or no
    daemon config is around), else the dataset of that name in the config's dataset roots,
    so the command `init-job` suggests works from any directory. A string is an error."""
    path = Path(value)
    explicit = config_path or os.environ.get("SELVAD_CONFIG")
    config_file = Path(config_path) if config_path else default_config_path()
    if path.is_dir() or (not explicit and not config_file.is_file()):
        return path
    try:
        cfg = load_config(config_file)
        return resolve_dataset(value, cfg.paths.dataset_roots)[1]
    except (ConfigError, OSError) as exc:
        return f"{value!r} is not a directory, and {config_file} cannot resolve it: {exc}"
    except ValueError as exc:
        return f"{value!r} is not a directory nor a dataset of {config_file}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    """`selvad validate DIR [--variant V] [--json] [--target ...] [--steps N] [--output F]`.

    Prints the report (terminal text, or JSON with --json) to stdout and optionally writes
    it to F (.toml or .json). Returns the exit status: 0 when nothing blocks training, 1 when
    there are errors (argparse exits 2 on bad arguments).
    """
    parser = argparse.ArgumentParser(
        prog="selvad validate", description="Check a dataset directory of clip pairs.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=HELP_RULES)
    parser.add_argument("directory", help="dataset directory (stem.npz + stem.wav pairs), or a "
                        "dataset name of the daemon config's dataset roots")
    parser.add_argument("--config", default=None,
                        help="daemon config whose dataset roots resolve a dataset NAME (default: "
                        "$SELVAD_CONFIG or /etc/selvad/selvad.toml, when it exists)")
    parser.add_argument("--variant", default=TrainConfig().variant, choices=variant_names(),
                        help="model variant to check against (rate, clip length, widths)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--target", nargs="+", help="LoRA targets of the planned job (advice)")
    parser.add_argument("--steps", type=int, help="training steps of the planned job (advice)")
    parser.add_argument("--output", help="also write the report to this .toml/.json file")
    args = parser.parse_args(argv)
    config = None
    if args.steps is not None or args.target:
        config = TrainConfig(steps=args.steps or TrainConfig().steps,
                             target=tuple(args.target or TrainConfig().target))
    directory = dataset_directory(args.directory, args.config)
    if isinstance(directory, str):
        print(f"selvad validate: {directory}", file=sys.stderr)
        return 2
    report = validate_dataset(directory, args.variant, config=config)
    out = report.to_json() if args.json else report.format_human()
    sys.stdout.write(out)
    sys.stdout.flush()
    if args.output:
        write_report(report, os.fspath(args.output))
    return 0 if report.ok else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
