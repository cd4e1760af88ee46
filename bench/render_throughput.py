"""Benchmark: one render (features -> waveform) of ours against a faithful copy of ComfyUI-SelVA's
Sampler node, on the same loaded model code.

Baseline ("faithful"): ComfyUI-SelVA `nodes/selva_sampler.py`, branch
feature/lora-timestep-sampling, `SelvaSampler.generate`, lines 113-160 (features cast with
`.to(device, dtype)`, CLIP text encoded on every call, conditions and empty conditions
preprocessed, noise drawn in the model dtype on the device), 219-229 (Euler through the
network's `ode_wrapper`: `selva_core/model/networks_generator.py` lines 337-345, where CFG runs
the conditional and the unconditional branch as two separate forwards), 243-248 (unnormalise,
VAE decode, vocoder) and 261-276 (float, RMS normalisation to -27 dBFS, peak guard). Steering,
textual inversion, offloading and progress bars are left out (off by default).
Ours: `selva_engine.inference.synth.Synthesizer.generate` (prompt features cached, CFG's two
branches as one batch of 2B through `Generator.guided_flow`, no normalisation).

Per loop (the two take turns, render by render): renders/s of the whole render and ms per stage (features: text encoding and
condition projection; euler: the `steps` guided velocity evaluations; vae: latent -> mel;
vocoder: mel -> waveform), each stage synchronised on a GPU. Features are random of the
variant's shapes at `--duration`; weights come from `--selva_dir` (default: a tiny model made
in a temporary directory, so the bench runs on a CPU with nothing downloaded). The last line is
`speedup: X.XX` (faithful time per render / ours).

    python bench/render_throughput.py [--selva_dir DIR] [--variant tiny_16k] [--duration 8]
        [--steps 25] [--cfg 4.5] [--rounds 3] [--device auto]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from selva_engine.inference.synth import Synthesizer
from selva_engine.model.flow import FlowMatching

STAGES = ("features", "euler", "vae", "vocoder")
PROMPT = "a dog barking in the distance"


class Timer:
    """Wall time per stage, synchronised on CUDA so a stage is not charged to the next."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.ms = device, dict.fromkeys(STAGES, 0.0)

    def run(self, stage: str, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.ms[stage] += 1000 * (time.perf_counter() - t0)
        return out


def features(synth: Synthesizer) -> tuple[np.ndarray, np.ndarray]:
    """Random clip (Nc, clip_dim) and sync (Ns, sync_dim) features of the synth's duration."""
    seq, v = synth.variant.sequence(synth.duration), synth.variant
    rng = np.random.default_rng(0)
    return (rng.standard_normal((seq.clip_seq_len, v.clip_dim)).astype(np.float32),
            rng.standard_normal((seq.sync_seq_len, v.sync_dim)).astype(np.float32))


@torch.no_grad()
def ours(synth: Synthesizer, clip: np.ndarray, sync: np.ndarray, steps: int, cfg: float, timer: Timer) -> np.ndarray:
    """Synthesizer.generate's calls in its order, each stage timed."""
    m, dev = synth.model, synth.device

    def conditions():
        text = synth.text_features(PROMPT)
        return m.preprocess_conditions(torch.from_numpy(clip)[None].to(dev), torch.from_numpy(sync)[None].to(dev),
                                       text), m.empty_conditions(1)

    cond, empty = timer.run("features", conditions)
    noise = synth.noise(0)
    fm = FlowMatching(min_sigma=0.0, num_steps=steps)
    lat = timer.run("euler", lambda: m.unnormalize(fm.to_data(lambda t, x: m.guided_flow(x, t, cond, empty, cfg),
                                                             noise).float()))
    mel = timer.run("vae", lambda: synth.codec.decode_mel(lat))
    return timer.run("vocoder", lambda: synth.codec.vocoder(mel)).squeeze(1).cpu().numpy()[0]


@torch.no_grad()
def faithful(synth: Synthesizer, clip: np.ndarray, sync: np.ndarray, steps: int, cfg: float, timer: Timer) -> np.ndarray:
    """The Sampler node's loop on the same modules (see the module docstring for the lines)."""
    m, dev, dtype = synth.model, synth.device, torch.float32  # the node's model dtype, fp32 here as ours

    def conditions():
        clip_f = torch.from_numpy(clip)[None].to(dev, dtype)
        sync_f = torch.from_numpy(sync)[None].to(dev, dtype)
        text = synth.text.encode([PROMPT]).to(dev)  # no cache: encoded on every call
        return m.preprocess_conditions(clip_f, sync_f, text), m.empty_conditions(1)

    cond, empty = timer.run("features", conditions)
    seq = synth.variant.sequence(synth.duration)
    g = torch.Generator(device=dev).manual_seed(0)
    x0 = torch.randn(1, seq.latent_seq_len, synth.variant.latent_dim, device=dev, dtype=dtype, generator=g)

    def ode(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = t * torch.ones(len(x), device=x.device, dtype=x.dtype)
        if cfg < 1.0:
            return m.predict_flow(x, t, cond)
        return cfg * m.predict_flow(x, t, cond) + (1 - cfg) * m.predict_flow(x, t, empty)  # two forwards

    fm = FlowMatching(min_sigma=0.0, num_steps=steps)
    lat = timer.run("euler", lambda: m.unnormalize(fm.to_data(ode, x0)))
    mel = timer.run("vae", lambda: synth.codec.decode_mel(lat))
    audio = timer.run("vocoder", lambda: synth.codec.vocoder(mel)).float()
    rms = audio.pow(2).mean().sqrt().clamp(min=1e-8)
    audio = audio * (10 ** (-27.0 / 20.0) / rms)
    peak = audio.abs().max().clamp(min=1e-8)
    audio = audio / peak if peak > 1.0 else audio
    return audio.squeeze(1).cpu().numpy()[0]


def measure(synth: Synthesizer, args: argparse.Namespace) -> dict[str, tuple[float, dict[str, float]]]:
    """{loop: (seconds per render, ms per stage per render)} over `rounds` renders of each after
    one warm-up each, the two loops taking turns render by render (so a machine that speeds up
    or slows down during the run weighs on both alike)."""
    clip, sync = features(synth)
    loops = {"faithful": faithful, "ours": ours}
    timers = {name: Timer(synth.device) for name in loops}
    seconds = dict.fromkeys(loops, 0.0)
    for fn in loops.values():
        fn(synth, clip, sync, args.steps, args.cfg, Timer(synth.device))  # warm-up (allocator, kernels)
    for _ in range(args.rounds):
        for name, fn in loops.items():
            t0 = time.perf_counter()
            fn(synth, clip, sync, args.steps, args.cfg, timers[name])
            seconds[name] += time.perf_counter() - t0
    return {name: (seconds[name] / args.rounds, {k: v / args.rounds for k, v in timers[name].ms.items()})
            for name in loops}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--selva_dir", default="", help="weights directory (default: a tiny model made here)")
    p.add_argument("--variant", default="tiny_16k")
    p.add_argument("--duration", type=float, default=8.0, help="seconds of audio per render")
    p.add_argument("--steps", type=int, default=25, help="Euler steps (the Sampler's default)")
    p.add_argument("--cfg", type=float, default=4.5, help="CFG scale (the Sampler's default)")
    p.add_argument("--rounds", type=int, default=3, help="timed renders per loop")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        selva_dir = args.selva_dir
        if not selva_dir:
            from selva_engine.weights.tiny import make_tiny

            make_tiny(tmp, args.variant, seed=0)
            selva_dir = tmp
        synth = Synthesizer(args.variant, selva_dir, device=args.device, duration=args.duration)
        print(f"{args.variant} {args.duration:g} s, {args.steps} steps, CFG {args.cfg:g} on {synth.device}")
        times = {}
        for name, (per, stages) in measure(synth, args).items():
            times[name] = per
            parts = "  ".join(f"{k} {stages[k]:8.1f}" for k in STAGES)
            print(f"{name:8s} {1 / per:7.3f} renders/s  ms/render: {parts}", flush=True)
    print(f"speedup: {times['faithful'] / times['ours']:.2f}")


if __name__ == "__main__":
    main()
