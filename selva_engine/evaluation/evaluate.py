"""The evaluator (`selva-eval`): compare adapters or checkpoints on a dataset by ear and metrics.

For every adapter (plus the baseline without LoRA) and every selected clip it generates one
sample with a fixed seed per clip, writes `<out>/<adapter id>/<clip>.wav`, computes the
spectral metrics against the clip's reference audio (copied to `<out>/reference/`), then
ranks the adapters by validation loss (when their files carry it) and by metric distance
to the references, and says which one it would pick and why. Outputs: eval_summary.json,
metric_comparison.png and the .wav files. Deterministic for a fixed seed.

With `--videos DIR` every adapter also renders each video of DIR, videos it never trained on
(`evaluation.videos`: `<out>/<adapter id>/videos/<video>.wav/.png/.mp4`, the same noise per
video for every adapter); the renders' noise symptom counts in the recommendation.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selva_engine.evaluation.recommend import Candidate, recommend
from selva_engine.io import atomic_write_json, safe_torch_load
from selva_engine.model.variants import variant_names

__all__ = ["AdapterSpec", "evaluate", "main", "metric_distance", "specs_from_run_dir"]

DISTANCE_METRICS = ("hf_energy_ratio", "spectral_centroid_hz", "spectral_flatness", "temporal_variance")


@dataclass(frozen=True)
class AdapterSpec:
    """An adapter to evaluate: id (folder name), file (None = baseline), and known losses."""

    id: str
    path: Path | None
    step: int | None = None
    val_loss: float | None = None
    train_fixed_loss: float | None = None


def metric_distance(metrics: dict[str, float], reference: dict[str, float]) -> float:
    """Mean relative difference |m - r| / max(|r|, 1e-6) over the shape metrics."""
    diffs = [abs(metrics[k] - reference[k]) / max(abs(reference[k]), 1e-6)
             for k in DISTANCE_METRICS if k in metrics and k in reference]
    return float(np.mean(diffs)) if diffs else float("nan")


def _average(items: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for m in items for k in m})
    return {k: float(np.mean([m[k] for m in items if k in m])) for k in keys}


def specs_from_run_dir(run_dir: Path | str) -> list[AdapterSpec]:
    """Every step checkpoint (with its fixed-noise losses) and every final, surgery and
    cancelled adapter of a run (see `_final_specs`)."""
    from selva_engine.outputs.checkpoint import list_checkpoints

    run_dir = Path(run_dir)
    specs = []
    for step, path in list_checkpoints(run_dir):
        ckpt = safe_torch_load(path, what="step checkpoint")
        hist = ckpt.get("history", {}) if isinstance(ckpt, dict) else {}
        val = train_fixed = None
        if step in hist.get("ckpt_step", []):
            k = hist["ckpt_step"].index(step)
            val, train_fixed = float(hist["val_loss"][k]), float(hist["train_fixed_loss"][k])
            val = None if val != val else val
        specs.append(AdapterSpec(f"step{step:05d}", path, step, val, train_fixed))
    specs += _final_specs(run_dir)
    return specs


_FINAL_RE = re.compile(r"^adapter_final(?:_(\d{3,}))?\.pt$")
_CANCELLED_RE = re.compile(r"^adapter_cancelled_step(\d{5,})\.pt$")
_SURGERY_RE = re.compile(r"^adapter_final(?:_(\d{3,}))?_surgery\.pt$")


def _final_specs(run_dir: Path) -> list[AdapterSpec]:
    """The run's end-of-training adapters as ComfyUI-SelVA names them: `adapter_final.pt`,
    `adapter_final_NNN.pt` (a re-run into the same directory), their spectral-surgery
    variants `..._surgery.pt`, and `adapter_cancelled_stepNNNNN.pt` (a stopped run)."""
    found = []
    for path in sorted(p for p in run_dir.iterdir() if p.is_file()):
        if m := _FINAL_RE.match(path.name):
            found.append(AdapterSpec("final" + (f"_{m.group(1)}" if m.group(1) else ""), path))
        elif m := _SURGERY_RE.match(path.name):
            suffix = f"_{m.group(1)}" if m.group(1) else ""
            found.append(AdapterSpec(f"final{suffix}_surgery", path))
        elif m := _CANCELLED_RE.match(path.name):
            step = int(m.group(1))
            found.append(AdapterSpec(f"cancelled{step:05d}", path, step))
    return found


# metric -> (axis label, direction) of the comparison chart
_CHART = {
    "hf_energy_ratio": ("energy above 4 kHz (fraction)", "closer to the reference is better"),
    "spectral_centroid_hz": ("spectral centroid (Hz)", "closer to the reference is better"),
    "spectral_flatness": ("spectral flatness (0 tone .. 1 noise)",
                          "closer to the reference is better"),
    "temporal_variance": ("RMS std / mean over frames", "closer to the reference is better"),
    "log_spectral_distance_db": ("log-spectral distance (dB)", "lower is better"),
    "mel_cepstral_distortion": ("mel cepstral distortion (dB)", "lower is better"),
}
_VERSUS_REFERENCE = ("log_spectral_distance_db", "mel_cepstral_distortion")


def _bar_chart(path: Path, labels: list[str], rows: list[dict[str, float]]) -> None:
    """metric_comparison.png: one panel per metric, bars per adapter (grey: the reference
    clips themselves, absent from the two distance panels), axis labels and direction."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from selva_engine.io import atomic_write_bytes

    fig = Figure(figsize=(12, 8), dpi=100)
    for k, name in enumerate(_CHART):
        ax = fig.add_subplot(2, 3, k + 1)
        first = 1 if name in _VERSUS_REFERENCE else 0  # the reference against itself is 0
        names, values = labels[first:], [r.get(name, 0.0) for r in rows[first:]]
        colors = (["#888888"] if first == 0 else []) + ["#3b75af"] * (len(labels) - 1)
        ax.bar(range(len(names)), values, color=colors[:len(names)])
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=7, ha="right")
        unit, direction = _CHART[name]
        ax.set_ylabel(unit, fontsize=8)
        ax.set_xlabel("adapter", fontsize=8)
        ax.set_title(f"{name}\n({direction})", fontsize=9)
    fig.suptitle("Spectral metrics per adapter, averaged over the evaluation clips "
                 "(grey: the reference audio)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def run_variant(run_dirs: list[str], adapters: list[AdapterSpec]) -> str | None:
    """The variant the runs (their meta.json, else a checkpoint's meta) or adapters were
    trained for; None when none says. ValueError when they name different variants."""
    found: dict[str, str] = {}
    for run_dir in run_dirs:
        try:
            meta = json.loads((Path(run_dir) / "meta.json").read_text())
            if isinstance(meta, dict) and isinstance(meta.get("variant"), str):
                found[str(run_dir)] = meta["variant"]
        except (OSError, ValueError):
            pass
    for spec in adapters:
        if spec.path is None or any(str(spec.path).startswith(str(r)) for r in found):
            continue
        meta = safe_torch_load(spec.path, what="adapter").get("meta", {})
        if isinstance(meta, dict) and isinstance(meta.get("variant"), str):
            found[str(spec.path)] = meta["variant"]
    if len(set(found.values())) > 1:
        raise ValueError("the adapters were trained for different variants ("
                         + ", ".join(f"{k}: {v}" for k, v in found.items())
                         + "); evaluate them separately or pass --variant")
    return next(iter(found.values()), None)


@dataclass(frozen=True)
class _Sampling:
    """How every sample is made: the first clip's seed, guidance, Euler steps, LoRA strength."""

    seed: int
    cfg: float
    steps: int
    strength: float


def _run_adapter(synth: Any, spec: AdapterSpec, chosen: list, references: dict, ref_metrics: dict,
                 output_dir: Path, how: _Sampling, videos: list, log: Any) -> dict:
    """One adapter's entry: its clip samples (.wav) and metrics, its video renders (`videos`),
    or status "failed" with the error (one broken adapter must not stop the comparison)."""
    from selva_engine.evaluation.metrics import compute_metrics
    from selva_engine.evaluation.videos import VIDEOS_DIR, render_videos
    from selva_engine.outputs.report import loudness_normalize, write_wav

    entry: dict = {"id": spec.id, "path": str(spec.path) if spec.path else None, "step": spec.step,
                   "val_loss": spec.val_loss, "train_fixed_loss": spec.train_fixed_loss}
    sr, seconds = synth.sampling_rate, synth.variant.sequence().duration
    try:
        synth.set_adapter(spec.path, how.strength)
        per_clip = {}
        for k, clip in enumerate(chosen):
            wave = synth.generate(clip.clip, clip.sync, clip.prompt, seed=how.seed + k, cfg=how.cfg,
                                  steps=how.steps, duration=seconds)
            wave = loudness_normalize(wave)
            write_wav(output_dir / spec.id / f"{clip.stem}.wav", wave, sr)
            per_clip[clip.stem] = compute_metrics(wave, sr, reference=references[clip.stem]).to_dict()
        entry.update(status="ok", clips=per_clip, avg_metrics=_average(list(per_clip.values())),
                     metric_distance=float(np.mean([metric_distance(per_clip[s], ref_metrics[s])
                                                    for s in per_clip])))
        if videos:
            entry["videos"] = render_videos(synth, videos, output_dir / spec.id / VIDEOS_DIR, seed=how.seed,
                                            cfg=how.cfg, steps=how.steps, label=spec.id, log=log)
        if spec.path is not None:
            meta = safe_torch_load(spec.path, what="adapter").get("meta", {})
            entry["meta"] = {k: v for k, v in meta.items() if isinstance(v, str | int | float | bool | list)}
    except Exception as exc:  # one broken adapter must not stop the comparison
        entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    return entry


def _recommend(ok: list[dict], reference_hf: float | None) -> Any:
    """The recommendation over the trained adapters that ran: by loss (`recommend`), else, when
    no file records one, by distance to the reference audio (`recommend_closest`); both weigh
    the noise symptom of the clip samples and of the video renders."""
    from selva_engine.evaluation.recommend import recommend_closest

    trained = [r for r in ok if r["path"]]
    cands = [Candidate(r["id"], r["path"], r["step"], r.get("val_loss"), r.get("train_fixed_loss"),
                       r["avg_metrics"], r.get("videos", {})) for r in trained]
    rec = recommend(cands, reference_hf=reference_hf)
    if rec.id is None and trained and not rec.rejected:  # no losses known: plain adapter files
        rec = recommend_closest(cands, {r["id"]: r["metric_distance"] for r in trained}, reference_hf)
    return rec


def _load_videos(videos_dir: Path | None, prompt: str | None, chosen: list, variant: Any,
                 selva_dir: str | Path, device: str, log: Any) -> list:
    """The `--videos` folder's videos encoded (none without one); ValueError for a folder
    without videos, or when no video of it can be read."""
    if videos_dir is None:
        return []
    from selva_engine.evaluation.videos import list_videos, prepare_videos

    paths = list_videos(videos_dir, log=log)
    text = prompt if prompt is not None else chosen[0].prompt
    log(f"encoding {len(paths)} video(s) of {videos_dir} with the prompt {text!r}")
    videos = prepare_videos(paths, prompt=text, selva_dir=selva_dir, variant=variant, device=device, log=log)
    if not videos:
        raise ValueError(f"{videos_dir}: none of its videos could be read (see the warnings above); "
                         "re-encode them, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`")
    return videos


def evaluate(*, data_dir: Path, output_dir: Path, variant: str, selva_dir: str | Path,
             adapters: list[AdapterSpec], include_baseline: bool = True, clips: int | None = None,
             steps: int = 25, seed: int = 42, cfg: float = 4.5, strength: float = 1.0,
             device: str = "auto", videos_dir: Path | None = None, prompt: str | None = None,
             log=print) -> dict:
    """Run the evaluation described in the module docstring; returns the summary dict.

    `videos_dir`: also render each video of that folder with every adapter (`evaluation.videos`),
    with `prompt` (default: the first evaluated clip's)."""
    from selva_engine.audio.files import load_audio
    from selva_engine.data.dataset import load_dataset
    from selva_engine.evaluation.metrics import compute_metrics
    from selva_engine.inference.synth import Synthesizer
    from selva_engine.model.variants import get_variant
    from selva_engine.outputs.report import write_wav
    from selva_engine.weights.locate import resolve

    start = time.monotonic()
    output_dir = Path(output_dir)
    var = get_variant(variant)
    resolve(selva_dir, var.name)  # missing weights: an error before minutes of video encoding
    scan = load_dataset(data_dir, var, collect=True)
    chosen = scan.clips[: clips or len(scan.clips)]
    if not chosen:
        raise ValueError(f"{data_dir}: no usable clips to evaluate on")
    videos = _load_videos(videos_dir, prompt, chosen, var, selva_dir, device, log)
    synth = Synthesizer(var, selva_dir, device=device)
    seq, sr = synth.variant.sequence(), synth.sampling_rate
    references, ref_metrics = {}, {}
    for clip in chosen:
        ref = load_audio(clip.audio_path, sr, seq.num_audio_frames)
        references[clip.stem] = ref
        ref_metrics[clip.stem] = compute_metrics(ref, sr).to_dict()
        write_wav(output_dir / "reference" / f"{clip.stem}.wav", ref, sr)
    specs = ([AdapterSpec("baseline", None)] if include_baseline else []) + list(adapters)
    how = _Sampling(seed, cfg, steps, strength)
    results = []
    for spec in specs:
        log(f"evaluating {spec.id} on {len(chosen)} clips" + (f" and {len(videos)} videos" if videos else ""))
        results.append(_run_adapter(synth, spec, chosen, references, ref_metrics, output_dir, how, videos, log))
    synth.set_adapter(None)
    if videos:
        log(f"video renders: {output_dir}/<adapter>/videos/<video>.wav, .png and .mp4 "
            f"({', '.join(v.name for v in videos)})")
    ok = [r for r in results if r["status"] == "ok"]
    ref_avg = _average(list(ref_metrics.values()))
    by_loss = [r["id"] for r in sorted((r for r in ok if r.get("val_loss") is not None or
                                         r.get("train_fixed_loss") is not None),
                                        key=lambda r: (r["val_loss"] if r.get("val_loss") is not None
                                                       else r["train_fixed_loss"]))]
    by_distance = [r["id"] for r in sorted(ok, key=lambda r: r["metric_distance"])]
    rec = _recommend(ok, ref_avg.get("hf_energy_ratio"))
    summary = {
        "data_dir": str(data_dir), "variant": synth.variant.name, "seed": seed, "steps": steps,
        "cfg": cfg, "strength": strength, "clips": [c.stem for c in chosen],
        "reference_avg": ref_avg, "reference_clips": ref_metrics, "adapters": results,
        "ranking": {"by_validation_loss": by_loss, "by_metric_distance": by_distance},
        "recommendation": rec.to_dict(), "duration_seconds": round(time.monotonic() - start, 2),
    }
    if videos:
        summary["videos"] = {"dir": str(videos_dir), "prompt": videos[0].prompt,
                             "files": {v.name: {"path": str(v.path), "seconds": v.seconds} for v in videos}}
    atomic_write_json(output_dir / "eval_summary.json", summary)
    _bar_chart(output_dir / "metric_comparison.png", ["reference"] + [r["id"] for r in ok],
               [ref_avg] + [r["avg_metrics"] for r in ok])
    log(_recommendation_line(rec))
    return summary


def _recommendation_line(rec: Any) -> str:
    """The closing line, in words (never a Python None)."""
    if rec.id is None:
        return f"recommendation: none ({rec.reason or 'no adapter qualified'})"
    low, high = rec.strength_range or (None, None)
    strength = f"; strength {low:g}-{high:g}" if low is not None and high is not None else ""
    return f"recommendation: {rec.id} ({rec.reason}){strength}"


class _DefaultsHelp(argparse.HelpFormatter):
    """Each option's help ends with its default, unless the help says it already or there
    is none to say (no "(default: None)")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.default in (None, False, [], "")
                or action.default is argparse.SUPPRESS or action.required):
            return text
        return f"{text} (default: %(default)s)"


def _batch(p: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """The `--from` file read (None without it); exits 2 through `p` when the folders are
    given twice or not at all."""
    if args.batch is None:
        if not (args.data_dir and args.output_dir):
            p.error("--data_dir and --output_dir are required (or --from eval_batch.json)")
        return None
    if args.data_dir or args.output_dir:
        p.error("--from gives data_dir and output_dir; leave out --data_dir and --output_dir")
    from selva_engine.evaluation.batchfile import read_eval_batch

    batch = read_eval_batch(args.batch)
    print(f"{args.batch}: {batch.name!r}, {len(batch.adapters)} adapter(s), steps {batch.steps}, "
          f"seed {batch.seed} (the LoRA Evaluator's file)", flush=True)
    return batch


def main(argv: list[str] | None = None) -> int:
    """`selva-eval` command line; returns the exit status (0 ok, 2 bad input)."""
    p = argparse.ArgumentParser(prog="selva-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=_DefaultsHelp)
    p.add_argument("--data_dir", default=None,
                   help="dataset directory of stem.npz + audio pairs to generate for "
                        "(required unless --from gives it)")
    p.add_argument("--output_dir", default=None,
                   help="where samples, eval_summary.json and metric_comparison.png go "
                        "(required unless --from gives it)")
    p.add_argument("--from", dest="batch", default=None, metavar="FILE",
                   help="ComfyUI-SelVA's LoRA Evaluator file (eval_batch.json): its data_dir, "
                        "output_dir, steps, seed and adapters (an entry without a path is the "
                        "base model); relative paths from the file's folder")
    p.add_argument("--variant", default=None,
                   help="model variant (" + ", ".join(variant_names(include_tiny=True))
                        + "); default: the one the runs or adapters were trained for, else "
                        "large_44k")
    p.add_argument("--selva_dir", default=os.environ.get("SELVA_DIR", ""),
                   help="SelVA weights directory (default: $SELVA_DIR)")
    p.add_argument("--adapter", action="append", default=[],
                   help="[ID=]PATH of an adapter file, repeatable")
    p.add_argument("--run_dir", action="append", default=[],
                   help="evaluate every checkpoint and final adapter of a run, repeatable")
    p.add_argument("--no_baseline", action="store_true",
                   help="skip the base model without an adapter")
    p.add_argument("--clips", type=int, default=None,
                   help="evaluate on the first N clips (default: all)")
    p.add_argument("--steps", type=int, default=25, help="Euler steps per sample")
    p.add_argument("--seed", type=int, default=42, help="noise seed of the first clip (+1 each)")
    p.add_argument("--cfg", type=float, default=4.5, help="classifier-free guidance strength")
    p.add_argument("--strength", type=float, default=1.0, help="LoRA strength")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: cuda when available")
    p.add_argument("--videos", default=None, metavar="DIR",
                   help="also render every video of DIR (.mp4/.mov/.mkv/.webm/.avi) with each adapter and "
                        "the baseline: <output_dir>/<adapter>/videos/<video>.wav, .png and .mp4 (the "
                        "picture copied, the new sound), the same noise per video for every adapter; their "
                        "metrics count in the recommendation (also with --from)")
    p.add_argument("--prompt", default=None,
                   help="what the sound of the --videos is (default: the first evaluated clip's prompt)")
    args = p.parse_args(argv)
    try:
        batch = _batch(p, args)
    except ValueError as exc:
        print(f"selva-eval: error: {exc}", file=sys.stderr)
        return 2
    specs = [AdapterSpec(ident, path) for ident, path in batch.adapters] if batch else []
    for item in args.adapter:
        ident, sep, path = item.partition("=")
        path = path if sep else ident
        specs.append(AdapterSpec(ident if sep else Path(path).stem, Path(path)))
    for run_dir in args.run_dir:
        specs += [AdapterSpec(f"{Path(run_dir).name}-{s.id}" if len(args.run_dir) > 1 else s.id,
                              s.path, s.step, s.val_loss, s.train_fixed_loss)
                  for s in specs_from_run_dir(run_dir)]
    try:
        found = None if args.variant else run_variant(args.run_dir, specs)
        variant = args.variant or found or "large_44k"
        how = ("" if args.variant else " (the one the runs/adapters were trained for)" if found
               else " (the default: no run or adapter names one)")
        print(f"variant: {variant}{how}", flush=True)
        evaluate(data_dir=batch.data_dir if batch else Path(args.data_dir),
                 output_dir=batch.output_dir if batch else Path(args.output_dir), variant=variant,
                 selva_dir=args.selva_dir, adapters=specs,
                 include_baseline=not args.no_baseline and batch is None,  # the file says
                 clips=args.clips, steps=batch.steps if batch else args.steps,
                 seed=batch.seed if batch else args.seed, cfg=args.cfg,
                 strength=args.strength, device=args.device,
                 videos_dir=Path(args.videos) if args.videos else None, prompt=args.prompt)
    except (ValueError, FileNotFoundError) as exc:
        print(f"selva-eval: error: {exc}", file=sys.stderr)
        return 2
    return 0
