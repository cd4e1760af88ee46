"""Command lines of the engine: `selva-train` (the original train_lora.py flags) and
`selva-sample` (LoRA Loader + Sampler without ComfyUI).

Exit status of selva-train: 0 done, 3 interrupted (a checkpoint of the current step was
saved; resume with --resume latest), 2 bad options or input, 1 any other failure, a full
disk included (with --json an "error" event carries the exception's message, for a full
disk "disk full in DIR: free space or lower retention"; then the traceback goes to stderr).
With --json every progress event is one JSON object per line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from dataclasses import fields
from pathlib import Path

from selva_engine.model.variants import variant_names
from selva_engine.training.options import CHOICES, TrainConfig

__all__ = ["build_sample_parser", "build_train_parser", "sample_main", "train_main"]

EXIT_INTERRUPTED = 3


def build_train_parser() -> argparse.ArgumentParser:
    """Parser with every flag of the original train_lora.py (same names and defaults) plus ours."""
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="selva-train", description="Train a SelVA LoRA adapter.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Steps at batch 4 (the guide's table): 10-20 clips 2000-4000, 20-50 clips "
        "4000-8000, 50+ clips 6000-15000. Noisy samples: lower the adapter strength to 0.6-0.7.")
    for add in (_data_args, _lora_args, _optimizer_args, _checkpoint_args, _run_args):
        add(p, d)
    return p


def _data_args(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Where the clips, weights and outputs are."""
    g = p.add_argument_group("data and outputs")
    g.add_argument("--data_dir", default="", help="directory of stem.npz + stem.wav pairs (required "
                   "unless --config_json gives it)")
    g.add_argument("--output_dir", default=d.output_dir,
                   help="where adapter checkpoints, samples and loss plots go")
    g.add_argument("--variant", default=d.variant, choices=variant_names(include_tiny=True),
                   help="model variant: " + ", ".join(variant_names(include_tiny=True))
                        + " (tiny_*: random test weights from `selva-weights make-tiny`)")
    g.add_argument("--selva_dir", default=os.environ.get("SELVA_DIR", ""),
                   help="weights directory (ComfyUI models/selva layout); from $SELVA_DIR")


def _lora_args(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The adapter: rank, scale, targets, initialisation."""
    g = p.add_argument_group("the adapter")
    g.add_argument("--rank", type=int, default=d.rank,
                   help="LoRA rank: higher = more capacity, more VRAM (8 fine detail, 32 hard sounds)")
    g.add_argument("--alpha", type=float, default=None,
                   help="LoRA alpha scaling; None means = rank (scale 1.0)")
    g.add_argument("--target", nargs="+", default=list(d.target),
                   help="layers to adapt; add linear1 only with 150+ clips")
    g.add_argument("--lora_dropout", type=float, default=d.lora_dropout,
                   help="dropout on the LoRA input (0 = off)")
    g.add_argument("--rslora", action="store_true", help="rank-stabilised LoRA: scale alpha/sqrt(rank)")
    g.add_argument("--init_mode", choices=CHOICES["init_mode"], default=d.init_mode,
                   help="standard (B = 0) or pissa (top-r SVD of the base; forces dropout 0)")
    g.add_argument("--spectral_surgery", choices=CHOICES["spectral_surgery"],
                   default=d.spectral_surgery, help="post-training singular-value reweighting")


def _optimizer_args(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Learning rate, schedule, batch and the training objective."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=d.lr,
                   help="learning rate (loss spikes early: 5e-5; very slow: 2e-4)")
    g.add_argument("--steps", type=int, default=d.steps, help="total training steps")
    g.add_argument("--warmup_steps", type=int, default=d.warmup_steps,
                   help="linear LR warmup steps")
    g.add_argument("--batch_size", type=int, default=d.batch_size,
                   help="clips per step: higher is more stable, uses more VRAM")
    g.add_argument("--grad_accum", type=int, default=d.grad_accum,
                   help="gradient accumulation steps (effective batch = batch_size x this)")
    g.add_argument("--timestep_sampling", "--timestep_mode", dest="timestep_sampling",
                   choices=CHOICES["timestep_sampling"], default=d.timestep_sampling,
                   help="how flow timesteps are drawn (logit_normal: lower loss floor)")
    g.add_argument("--logit_normal_sigma", type=float, default=d.logit_normal_sigma,
                   help="spread of logit-normal timesteps")
    g.add_argument("--lr_schedule", choices=CHOICES["lr_schedule"], default=d.lr_schedule,
                   help="LR after warmup")
    g.add_argument("--lora_plus_ratio", type=float, default=d.lora_plus_ratio,
                   help="LoRA+: LR of B = lr x ratio (1 = plain LoRA)")
    g.add_argument("--weight_decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    g.add_argument("--curriculum_switch", type=float, default=d.curriculum_switch,
                   help="with --timestep_mode curriculum: fraction trained logit-normal")
    g.add_argument("--latent_mixup_alpha", type=float, default=d.latent_mixup_alpha,
                   help="Beta(a, a) latent mixup within a batch (0 = off)")
    g.add_argument("--latent_noise_sigma", type=float, default=d.latent_noise_sigma,
                   help="latent noise sigma * std(x1) (0 = off)")
    g.add_argument("--grad_clip", type=float, default=d.grad_clip,
                   help="clip the gradient norm to this (0 = off)")
    g.add_argument("--latent_sampling", choices=CHOICES["latent_sampling"], default=d.latent_sampling,
                   help="how a latent is drawn from the VAE's distribution")


def _checkpoint_args(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Checkpoints, their samples, validation and evaluation."""
    g = p.add_argument_group("checkpoints, samples and evaluation")
    g.add_argument("--save_every", type=int, default=d.save_every,
                   help="save a checkpoint and a sample every N steps")
    g.add_argument("--val_clips", type=int, default=None,
                   help="clips held out for validation loss; None: 1 with >= 8 clips, else 0")
    g.add_argument("--overfit_patience", type=int, default=d.overfit_patience,
                   help="warn after N checkpoints of rising validation loss")
    g.add_argument("--log_every", type=int, default=d.log_every, help="progress line every N steps")
    g.add_argument("--sample_steps", type=int, default=d.sample_steps,
                   help="Euler steps of each checkpoint's sample")
    g.add_argument("--sample_cfg", type=float, default=d.sample_cfg,
                   help="CFG scale of each checkpoint's sample")
    g.add_argument("--sample_negative_prompt", default=d.sample_negative_prompt,
                   help="negative prompt of each checkpoint's sample")
    g.add_argument("--sample_videos", nargs="*", default=list(d.sample_videos),
                   help="audition videos (paths in the dataset) rendered at each checkpoint, besides audition/")
    g.add_argument("--eval_clips", type=int, default=d.eval_clips,
                   help="after training, evaluate every checkpoint on N clips (0 = off)")
    g.add_argument("--eval_steps", type=int, default=d.eval_steps,
                   help="Euler steps of the evaluation samples")
    g.add_argument("--eval_cfg", type=float, default=d.eval_cfg, help="CFG scale of the evaluation")


def _run_args(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Precision, seed, resuming, speed options, device and output format."""
    g = p.add_argument_group("how the run goes")
    g.add_argument("--precision", choices=CHOICES["precision"], default=d.precision,
                   help="mixed precision")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed")
    g.add_argument("--resume", default="",
                   help="resume from adapter_stepNNNNN.pt or 'latest' (empty: start fresh); "
                        "resuming into the same --output_dir keeps the earlier "
                        "adapter_final.pt and writes this run's as adapter_final_001.pt "
                        "(the next free number), which the last line names")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer blocks (falls back with a warning)")
    g.add_argument("--gradient_checkpointing", action="store_true",
                   help="recompute block activations in backward: less memory, slower step")
    g.add_argument("--device", default=d.device, help="auto, cpu or cuda[:N]")
    g.add_argument("--cache_dir", default=d.cache_dir,
                   help="feature cache directory (empty: none)")
    g.add_argument("--config_json", default="",
                   help="read all options from this JSON file (empty: flags only)")
    g.add_argument("--json", action="store_true",
                   help="progress events as JSON lines on stdout instead of readable lines")


def _human(event: dict) -> str | None:
    kind = event.get("event")
    if kind == "progress":
        eta = event["eta_s"]
        left = ("last checkpoint and sample next" if event["step"] >= event["steps"]
                else f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        return (f"step {event['step']}/{event['steps']}  train loss (smoothed) "
                f"{event['smoothed_loss']:.4f}  lr {event['lr']:.2e}  "
                f"grad {event['grad_norm']:.3f}  {event['samples_per_s']:.1f} samples/s  {left}")
    if kind == "checkpoint":
        val = f", val loss {event['val_loss']:.4f}" if event.get("val_loss") is not None else ""
        return f"checkpoint {event['path']} (sample {Path(event['sample']).name}{val})"
    if kind == "recommendation":
        if not event.get("id"):
            return f"recommendation: none ({event.get('reason', '')})"
        low, high = event["strength_range"]
        return f"recommended checkpoint: {event['id']} ({event['reason']}); try strength {low}-{high}"
    if kind == "warning":
        return f"warning: {event['message']}"
    if kind == "eval_done":
        rec = event.get("recommendation") or {}
        return f"evaluation written to {event['summary']} (picks {rec.get('id')}: {rec.get('reason')})"
    if kind == "done" and event.get("adapter") and Path(event["adapter"]).name != "adapter_final.pt":
        name = Path(event["adapter"]).name
        return (f"done: step {event.get('step')}, final adapter {event['adapter']} (the "
                f"adapter_final.pt of the earlier run in this folder is kept; this run's is {name})")
    if kind in ("extract_start", "extract_done", "video_extract_start", "video_extract_done",
                "train_start", "resumed", "done", "interrupted"):
        rest = {k: v for k, v in event.items() if k not in ("event", "time") and v is not None}
        return f"{kind}: " + ", ".join(f"{k}={_value(k, v)}" for k, v in rest.items())
    return None


def _value(key: str, value: object) -> str:
    """One event value in words: seconds as "11.8 s", other floats to 4 significant digits."""
    if isinstance(value, float) and (key == "seconds" or key.endswith("_s")):
        return f"{value:.1f} s"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def train_main(argv: list[str] | None = None) -> int:
    """`selva-train`: parse flags, train, print progress; returns the exit status."""
    parser = build_train_parser()
    args = parser.parse_args(argv)
    if not args.data_dir and not args.config_json:
        parser.error("--data_dir is required (or --config_json with data_dir in it)")
    names = {f.name for f in fields(TrainConfig)} - {"extra"}
    if args.config_json:
        options = json.loads(Path(args.config_json).read_text())
    else:
        options = {k: v for k, v in vars(args).items() if k in names}
    try:
        cfg = TrainConfig.from_dict(options)
    except (KeyError, TypeError) as exc:
        print(f"selva-train: {exc}", file=sys.stderr)
        return 2

    def events(event: dict) -> None:
        if args.json:
            print(json.dumps(event, default=str), flush=True)
        else:
            line = _human(event)
            if line:
                print(line, flush=True)

    from selva_engine.errors import DatasetError
    from selva_engine.io import UnsafeFileError
    from selva_engine.model.lora import AdapterError
    from selva_engine.training.trainer import TrainError, train
    from selva_engine.weights.locate import MissingWeightsError

    try:
        result = train(cfg, events=events)
    except (TrainError, DatasetError, MissingWeightsError, AdapterError, UnsafeFileError,
            FileNotFoundError, ValueError) as exc:
        if args.json:
            print(json.dumps({"event": "error", "error": type(exc).__name__, "message": str(exc)}), flush=True)
        _to_stderr(f"selva-train: error: {exc}")
        return 2
    except Exception as exc:  # the run boundary: one sentence out, the traceback to stderr
        return _unexpected("selva-train", exc, args.json, Path(cfg.output_dir))
    return 0 if result.status == "done" else EXIT_INTERRUPTED


def _to_stderr(text: str, with_traceback: bool = False) -> None:
    """Write `text` (after the current traceback, if asked) to stderr, the run's log. That
    log may sit on the disk that just filled up: a failed write is dropped, so that the
    error already reported on stdout stays the last word."""
    try:
        if with_traceback:
            traceback.print_exc(file=sys.stderr)
        print(text, file=sys.stderr, flush=True)
    except OSError:
        pass


def _unexpected(prog: str, exc: Exception, as_json: bool, where: Path | None = None) -> int:
    """Report an unexpected failure: first an "error" event (with --json) whose message is
    the exception's own text (for a full disk, DiskFullError's sentence about the file's
    directory or else `where`), then the whole traceback on stderr (the run's log);
    returns 1."""
    from selva_engine.io import DiskFullError, is_disk_full

    if is_disk_full(exc) and not isinstance(exc, DiskFullError):
        name = exc.filename if isinstance(exc, OSError) else None
        full = DiskFullError(Path(os.fsdecode(name)).parent if isinstance(name, (str, bytes))
                             else where or Path.cwd())
        kind, message = type(full).__name__, str(full)
    else:
        kind, message = type(exc).__name__, str(exc).strip() or "no message"
    if as_json:
        print(json.dumps({"event": "error", "error": kind, "message": message}), flush=True)
    _to_stderr(f"{prog}: error: {kind}: {message}", with_traceback=True)
    return 1


def build_sample_parser() -> argparse.ArgumentParser:
    """`selva-sample`'s flags: the LoRA Loader's and Sampler's widgets (the Sampler's defaults),
    plus, with --video, the Feature Extractor's prompt and mask."""
    p = argparse.ArgumentParser(
        prog="selva-sample", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Generate audio for one clip: from the Feature Extractor's .npz (--npz), or from a "
        "video (--video: Feature Extractor -> LoRA Loader -> Sampler in one command).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--npz", help="features file written by the SelVA Feature Extractor")
    src.add_argument("--video", help="video file (.mp4 .mov .mkv .webm .avi); needs --prompt")
    p.add_argument("--output", required=True, help="output .wav; with --video also .mp4/.m4v/.mov/.mkv: "
                   "the original picture (stream copied, not re-encoded) with the generated sound as AAC")
    p.add_argument("--adapter", default="", help="adapter_final.pt / adapter_stepNNNNN.pt (none: baseline)")
    p.add_argument("--strength", type=float, default=1.0, help="adapter strength (0 = the base model)")
    p.add_argument("--variant", default=None,
                   help="default: the variant the adapter's meta names, else large_44k")
    p.add_argument("--allow-other-variant", action="store_true",
                   help="load an adapter whose meta names another variant than --variant (refused "
                   "otherwise; it loads only when every tensor's shape matches)")
    p.add_argument("--selva_dir", default=os.environ.get("SELVA_DIR", ""),
                   help="weights directory (ComfyUI models/selva layout; with --video also the video "
                   "encoders, as `selva-weights check` lists them); default $SELVA_DIR")
    p.add_argument("--prompt", default=None, help="what the sound is; required with --video (the Feature "
                   "Extractor encodes it with the frames); with --npz default: the prompt stored in it")
    p.add_argument("--mask", default=None, help="--video only: mask image (static) or video (per frame)")
    p.add_argument("--mask_strength", type=float, default=1.0,
                   help="--video only: 1 = background fully grey, 0 = no mask")
    p.add_argument("--negative_prompt", default="", help="CFG's negative prompt (empty: none)")
    p.add_argument("--cfg", type=float, default=4.5, help="classifier-free guidance scale")
    p.add_argument("--steps", type=int, default=25, help="Euler steps")
    p.add_argument("--seed", type=int, default=0, help="noise seed (as the Sampler node)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds (at most 30); default: the .npz's duration (else 8) or the video's "
                   "(its first 30 s if longer)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    return p


def _render(args: argparse.Namespace) -> Path:
    """Run the chain `args` ask for (imports here: `--help` does not load torch)."""
    from selva_engine.inference.render import synthesize
    from selva_engine.inference.render_video import VideoRequest, check_output, render_video

    common = dict(output=Path(args.output), variant=args.variant, selva_dir=args.selva_dir,
                  adapter=args.adapter or None, strength=args.strength,
                  negative_prompt=args.negative_prompt, cfg=args.cfg, steps=args.steps, seed=args.seed,
                  duration=args.duration, device=args.device,
                  allow_other_variant=args.allow_other_variant)
    if args.video is None:
        if args.mask is not None:
            raise ValueError("--mask works on video frames; use it with --video (an .npz is encoded already)")
        check_output(Path(args.output), with_video=False)
        return synthesize(npz=Path(args.npz), prompt=args.prompt, **common)
    req = VideoRequest(Path(args.video), args.prompt or "", Path(args.mask) if args.mask else None,
                       args.mask_strength)
    return render_video(req=req, **common)


def sample_main(argv: list[str] | None = None) -> int:
    """`selva-sample`: one .wav (or, with --video, a video with the sound) from an .npz or a video
    (+ adapter at a strength); returns the exit status (0 written, 2 bad input or missing weights)."""
    args = build_sample_parser().parse_args(argv)
    if not args.selva_dir:
        _to_stderr("selva-sample: error: no weights directory was given; pass --selva_dir DIR "
                   "(the ComfyUI models/selva folder) or set $SELVA_DIR")
        return 2

    from selva_engine.errors import DatasetError
    from selva_engine.io import UnsafeFileError
    from selva_engine.model.lora import AdapterError
    from selva_engine.weights.locate import MissingWeightsError

    try:
        path = _render(args)
    except (DatasetError, MissingWeightsError, AdapterError, UnsafeFileError, FileNotFoundError,
            ValueError) as exc:
        _to_stderr(f"selva-sample: error: {exc}")
        return 2
    print(f"wrote {path}")
    return 0


def extract_main(argv: list[str] | None = None) -> int:
    """`python -m selva_engine.cli extract ...`: fill the extraction cache for a dataset.

    Prints JSON events with --json. Exit 0 on success, 2 on bad input or missing weights.
    """
    p = argparse.ArgumentParser(prog="selva-extract", description="Encode a dataset into the cache.")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--variant", default="large_44k")
    p.add_argument("--selva_dir", default=os.environ.get("SELVA_DIR", ""))
    p.add_argument("--cache_dir", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--prepare", default="{}",
                   help='a job\'s [prepare] values as JSON, over dataset.toml\'s (e.g. \'{"loudness": true}\')')
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from selva_engine.data.dataset import load_dataset
    from selva_engine.data.extract import FeatureCache, extract_clips
    from selva_engine.data.prepare_file import read_prepare_settings
    from selva_engine.data.video_extract import add_video_clips
    from selva_engine.errors import DatasetError
    from selva_engine.io import UnsafeFileError
    from selva_engine.model.variants import get_variant
    from selva_engine.weights.locate import MissingWeightsError, resolve

    def emit(event: dict) -> None:
        print(json.dumps(event, default=str) if args.json else _human(event) or json.dumps(event), flush=True)

    try:
        variant = get_variant(args.variant)
        weights = resolve(args.selva_dir, variant.name)
        scan = load_dataset(args.data_dir, variant, collect=True)
        device = args.device if args.device != "auto" else ("cuda" if _cuda() else "cpu")
        cache = FeatureCache(args.cache_dir)
        add_video_clips(scan, variant, weights=weights, cache=cache, device=device, progress=emit)
        for problem in scan.problems:
            emit({"event": "warning", "message": f"skipping clip: {problem}"})
        prepare, bad = read_prepare_settings(args.data_dir, json.loads(args.prepare))
        for problem in bad:
            emit({"event": "warning", "message": f"[prepare] of dataset.toml not used: {problem}"})
        emit({"event": "extract_start", "clips": len(scan.clips), "prepare": list(prepare.steps())})
        _, _, stats = extract_clips(scan.clips, variant, weights=weights, cache=cache, device=device,
                                    progress=emit, prepare=prepare)
        emit({"event": "extract_done", **stats.to_dict()})
    except (DatasetError, MissingWeightsError, UnsafeFileError, FileNotFoundError, ValueError) as exc:
        emit({"event": "error", "error": type(exc).__name__, "message": str(exc)})
        return 2
    except Exception as exc:  # the run boundary: one sentence out, the traceback to stderr
        return _unexpected("selva-extract", exc, args.json, Path(args.cache_dir))
    return 0


def render_main(argv: list[str] | None = None) -> int:
    """`python -m selva_engine.cli render --spec FILE --json`: one render run of the daemon
    (`inference.render_job`). Exit 0 written, 2 bad input or missing weights, 1 otherwise."""
    p = argparse.ArgumentParser(prog="selva-render", description="Render one video of a render folder.")
    p.add_argument("--spec", required=True, help="the JSON spec the daemon wrote")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from selva_engine.errors import DatasetError
    from selva_engine.inference.render_job import RenderSpec, run_render
    from selva_engine.io import UnsafeFileError
    from selva_engine.model.lora import AdapterError
    from selva_engine.weights.locate import MissingWeightsError

    def emit(event: dict) -> None:
        print(json.dumps(event, default=str), flush=True)

    try:
        spec = RenderSpec.from_dict(json.loads(Path(args.spec).read_text()))
        run_render(spec, emit)
    except (DatasetError, MissingWeightsError, AdapterError, UnsafeFileError, FileNotFoundError,
            ValueError) as exc:
        emit({"event": "error", "error": type(exc).__name__, "message": str(exc)})
        _to_stderr(f"selva-render: error: {exc}", with_traceback=True)
        return 2
    except Exception as exc:  # the run boundary: one sentence out, the traceback to stderr
        return _unexpected("selva-render", exc, args.json, Path(args.spec).parent)
    emit({"event": "done"})
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    """`python -m selva_engine.cli {train,extract,sample,extract-video,render} ...` (what the daemon's worker runs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": train_main, "extract": extract_main, "sample": sample_main,
                "extract-video": extract_video_main, "render": render_main}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m selva_engine.cli {{{','.join(commands)}}} [options]", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


def extract_video_main(argv: list[str] | None = None) -> int:
    """`selva-extract` / `extract-video`: the Feature Extractor node's `.npz` for video files."""
    from selva_engine.video.cli import main

    return main(argv)


def eval_main(argv: list[str] | None = None) -> int:
    """`selva-eval`: compare adapters on a dataset (see selva_engine.evaluation.evaluate)."""
    from selva_engine.evaluation.evaluate import main

    return main(argv)


if __name__ == "__main__":
    sys.exit(main())
