"""Benchmark: the trainer's step against a faithful copy of ComfyUI-SelVA's training loop.

Baseline ("faithful"): ComfyUI-SelVA `train_lora.py`, branch feature/lora-timestep-sampling,
lines ~373-411 (its training loop; described exactly in SELVA-FACTS.md sections 4.4 and 10.4):
ONE batched forward of the stacked clips, the batch stacked on the host and moved with
`.to(device, dtype)` at every step, the whole generator cast to the training dtype (LoRA
weights and therefore AdamW state included; no autocast), conditions recomputed inside
`forward`, t and x0 drawn in that dtype on the device, `loss.item()` every step, grad-norm
clip 1.0, AdamW (lora_A / lora_B groups) with weight decay 1e-2, warm-up LambdaLR.
Ours: selva_engine.training.loop.StepRunner as train() sets it up (clip tensors resident,
conditions preprocessed once, fp32 LoRA weights under autocast, frozen weights stored in the
compute dtype once, fused AdamW, no host sync inside the step); --compile adds a row
"ours+compile" (torch.compile'd blocks, `compile = true`) and --gradient_checkpointing a row
"ours+ckpt" (its cost in step time and its memory). Both loops run the same model code, so a
faster model (fused attention inputs, transpose-free convolutions, RoPE as one complex
product) speeds up both; the ratio measures the loop. On a CPU, where host-device copies and
host syncs cost nothing, the one loop saving that remains is the conditions (the anchor
recomputes them each step): the eager ratio is bounded by the FLOP ratio of the two steps
(tiny_16k@4: 0.0153 / 0.0128 = 1.195); torch.compile's fused elementwise kernels are what
take ours past it.

Per variant@batch: step ms, samples/s, model FLOPs per step (torch.utils.flop_counter, one
forward + backward, recomputation not counted), achieved TFLOP/s, MFU against a matmul
ceiling measured in this run (GPU: 8192^3 bf16; CPU: 2048^3 in the run's dtype), peak memory
(GPU: allocated / reserved, each trainer alone in a child process; CPU: peak RSS over the
base model). Defaults: GPU small_16k@16, large_44k@4, large_44k@16; CPU tiny_16k@4. Random
weights of the real shapes. `--profile` prints the top kernels of ours (torch.profiler).
The last line is `speedup: X.XX`: ours (its faster row, eager or compiled) over the
faithful baseline, last configuration.

    python bench/train_throughput.py [--variant large_44k] [--batch 16] [--steps 10]
        [--rounds 3] [--device auto] [--compile] [--gradient_checkpointing] [--profile]
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from generator_step import random_model  # bench/ is on sys.path when a bench script runs
from torch.utils.flop_counter import FlopCounterMode

from selva_engine.model.flow import FlowMatching
from selva_engine.model.generator import Generator
from selva_engine.model.lora import apply_lora, lora_parameters
from selva_engine.model.variants import get_variant
from selva_engine.training.acceleration import CompileTrial, compile_blocks
from selva_engine.training.loop import (
    StepRunner,
    autocast_for,
    compute_dtype,
    effective_precision,
    make_scheduler,
    store_frozen_in_compute_dtype,
)
from selva_engine.training.options import TrainConfig

KEYS = ("x1", "clip", "sync", "text")


def dataset(variant: str, clips: int) -> list[dict[str, torch.Tensor]]:
    """`clips` random clips of `variant`'s shapes as host fp32 tensors (as a loader gives them)."""
    v, s = get_variant(variant), get_variant(variant).sequence()
    rng = np.random.default_rng(0)
    shapes = {"x1": (s.latent_seq_len, v.latent_dim), "clip": (s.clip_seq_len, v.clip_dim),
              "sync": (s.sync_seq_len, v.sync_dim), "text": (v.text_seq_len, v.text_dim)}
    return [{k: torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) for k, shape in shapes.items()}
            for _ in range(clips)]


class Ours:
    """Our trainer's step: StepRunner set up as train() sets it up."""

    def __init__(self, base: Generator, data, device, precision: str, *, checkpointing: bool = False) -> None:
        cfg = TrainConfig(batch_size=len(data), precision=precision, warmup_steps=0)
        self.model = copy.deepcopy(base)
        apply_lora(self.model, rank=16, targets=["attn.qkv"], dtype=torch.float32)
        self.model.train()
        store_frozen_in_compute_dtype(self.model, precision)
        a, b = lora_parameters(self.model)
        optimizer = torch.optim.AdamW([{"params": a, "lr": cfg.lr}, {"params": b, "lr": cfg.lr}],
                                      weight_decay=cfg.weight_decay, fused=device.type in ("cuda", "cpu"))
        autocast = autocast_for(device, precision)
        stack = {k: torch.stack([d[k] for d in data]).to(device) for k in KEYS}
        with torch.no_grad(), autocast:
            cond = self.model.preprocess_conditions(stack["clip"], stack["sync"], stack["text"])
        self.runner = StepRunner(
            self.model, FlowMatching(), cfg, lat_mean=stack["x1"], lat_std=torch.zeros_like(stack["x1"]),
            conditions=cond.index, autocast=autocast,
            scaler=torch.amp.GradScaler(device.type, enabled=False), optimizer=optimizer,
            scheduler=make_scheduler(optimizer, cfg), params=a + b,
            gen_t=torch.Generator().manual_seed(0), gen_noise=torch.Generator().manual_seed(1))
        self.checkpointing = checkpointing
        self.steps, self.log_every = 0, cfg.log_every

    def accelerate(self, compile_: bool) -> None:
        """Switch on the speed options (after the FLOPs were counted on the plain step)."""
        self.model.gradient_checkpointing = self.checkpointing
        if compile_:
            compile_blocks(self.model)
            self.runner.first_step = CompileTrial(
                self.model, lambda e: print(f"note: compiled {e['blocks']} blocks in {e['seconds']:.1f} s"),
                lambda m: print(f"note: {m}"))

    def step(self, idx: list[int]) -> None:
        self.runner.micro_step(idx, step=self.steps + 1)
        self.runner.optimizer_step()
        self.steps += 1
        if self.steps % self.log_every == 0:  # train() reads losses back once per log interval
            self.runner.flush(self.steps)


class Faithful:
    """ComfyUI-SelVA train_lora.py's loop (lines ~373-411), as SELVA-FACTS 4.4 / 10.4 give it."""

    def __init__(self, base: Generator, data, device, precision: str) -> None:
        self.dtype, self.device, self.data = compute_dtype(precision), device, data
        self.model = copy.deepcopy(base)
        apply_lora(self.model, rank=16, targets=["attn.qkv"])
        self.model.to(self.dtype).train()  # wholesale: frozen weights, LoRA, so AdamW state
        a, b = lora_parameters(self.model)
        self.params = a + b
        self.opt = torch.optim.AdamW([{"params": a, "lr": 1e-4}, {"params": b, "lr": 1e-4}],
                                     lr=1e-4, weight_decay=1e-2)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, s / 100))
        self.losses: list[float] = []

    def accelerate(self, compile_: bool) -> None:
        """The anchor has no speed options."""

    def step(self, idx: list[int]) -> None:
        batch = {k: torch.stack([self.data[j][k] for j in idx]).to(self.device, self.dtype) for k in KEYS}
        x1 = self.model.normalize(batch["x1"])
        t = torch.rand(len(idx), device=self.device, dtype=self.dtype)
        x0 = torch.randn_like(x1)
        tt = t[:, None, None]
        xt = (1 - tt) * x0 + tt * x1
        v = self.model(xt, batch["clip"], batch["sync"], batch["text"], t)  # conditions inside
        loss = (v - (x1 - x0)).pow(2).mean(dim=(1, 2)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(loss.item())  # a host sync every step, as the anchor logs


class Compiled(Ours):
    """Ours with `compile = true`: the transformer blocks torch.compile'd."""

    def accelerate(self, compile_: bool) -> None:
        super().accelerate(True)


TRAINERS = {"ours": Ours, "faithful": Faithful, "ours+compile": Compiled,
            "ours+ckpt": lambda *a: Ours(*a, checkpointing=True)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def batches(batch: int, clips: int, count: int, start: int = 0) -> list[list[int]]:
    return [[((start + s) * batch + k) % clips for k in range(batch)] for s in range(count)]


def seconds_per_step(trainer, batch: int, clips: int, steps: int, device: torch.device) -> float:
    """Mean wall seconds of `steps` steps (the device drained before and after)."""
    sync(device)
    start = time.perf_counter()
    for idx in batches(batch, clips, steps):
        trainer.step(idx)
    sync(device)
    return (time.perf_counter() - start) / steps


def step_flops(trainer, batch: int, clips: int) -> float:
    """FLOPs of one training step (forward + backward), counted by torch's FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        trainer.step(batches(batch, clips, 1)[0])
    return float(counter.get_total_flops())


def matmul_ceiling(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul in `dtype` on `device`: the ceiling MFU is taken against."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(3 if device.type == "cpu" else 10):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def trainer_memory(name: str, variant: str, batch: int, clips: int, device: torch.device,
                   precision: str) -> dict[str, float]:
    """Peak memory (MiB) of one trainer alone in this (fresh) process over 3 steps: CUDA the
    allocator's peak allocated and reserved bytes, the CPU the peak RSS over the base model."""
    base, data = random_model(variant, device), dataset(variant, clips)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        before = _proc_status_kib("VmRSS") * 1024
    trainer = TRAINERS[name](base, data, device, precision)
    trainer.accelerate(False)
    seconds_per_step(trainer, batch, clips, 3, device)
    if device.type == "cuda":
        return {"allocated": torch.cuda.max_memory_allocated() / 2**20,
                "reserved": torch.cuda.max_memory_reserved() / 2**20}
    return {"rss": (_proc_status_kib("VmHWM") * 1024 - before) / 2**20}


def memory_in_child(name: str, variant: str, batch: int, clips: int, device: torch.device) -> str:
    """trainer_memory of `name` measured in a child process, as text for the report row."""
    argv = [sys.executable, __file__, "--variant", variant, "--batch", str(batch), "--clips", str(clips),
            "--device", str(device), "--memory-of", name]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900)
    except subprocess.TimeoutExpired:
        return "n/a (the memory child took over 900 s)"
    for line in out.stdout.splitlines():
        if line.startswith("memory "):
            mem = json.loads(line[len("memory "):])
            if "rss" in mem:
                return f"+{mem['rss']:.1f} MiB RSS over the base model"
            return f"{mem['allocated']:.0f} MiB allocated, {mem['reserved']:.0f} MiB reserved"
    return f"n/a ({out.stderr.strip()[-200:]})"


def profile(trainer, batch: int, clips: int, device: torch.device) -> None:
    """Print the top kernels of 3 steps of `trainer` (torch.profiler), by self time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        seconds_per_step(trainer, batch, clips, 3, device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=20, max_name_column_width=60))


def run_config(variant: str, batch: int, args, device: torch.device, precision: str,
               ceiling: float) -> float:
    """Measure every trainer at variant@batch, print a row each; returns ours/faithful."""
    clips = max(args.clips, batch)
    base, data = random_model(variant, device), dataset(variant, clips)
    names = (["ours", "faithful"] + (["ours+compile"] if args.compile else [])
             + (["ours+ckpt"] if args.gradient_checkpointing else []))
    trainers = {n: TRAINERS[n](base, data, device, precision) for n in names}
    flops = {n: step_flops(t, batch, clips) for n, t in trainers.items()}
    for trainer in trainers.values():
        trainer.accelerate(False)  # the compile option is the ours+compile row
        seconds_per_step(trainer, batch, clips, 2, device)  # warm-up (and compile)
    best = dict.fromkeys(names, float("inf"))
    for _ in range(args.rounds):  # interleaved so that machine load affects all alike
        for name, trainer in trainers.items():
            best[name] = min(best[name], seconds_per_step(trainer, batch, clips, args.steps, device))
    if args.profile:
        print(f"profile of ours at {variant}@{batch}:")
        profile(trainers["ours"], batch, clips, device)
    del trainers, base
    if device.type == "cuda":
        torch.cuda.empty_cache()  # leave the GPU to the measuring children
    for name in names:
        sec = best[name]
        mem = memory_in_child(name, variant, batch, clips, device)
        print(f"{variant}@{batch} {name:9s} step {sec * 1e3:9.1f} ms {batch / sec:9.2f} samples/s "
              f"{flops[name] / 1e12:9.4f} TFLOP/step {flops[name] / sec / 1e12:8.3f} TFLOP/s "
              f"MFU {100 * flops[name] / sec / ceiling:5.1f} %  peak {mem}")
    ours = [n for n in names if n in ("ours", "ours+compile")]  # ours+ckpt trades speed for memory
    for name in ours:
        print(f"{variant}@{batch} {name} / faithful: {best['faithful'] / best[name]:.2f}x")
    return best["faithful"] / min(best[n] for n in ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", help="default: small_16k and large_44k on a GPU, tiny_16k on the CPU")
    parser.add_argument("--batch", type=int, help="default: 16 and 4 on a GPU, 4 on the CPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true",
                        help="also measure ours with torch.compile'd blocks (row ours+compile)")
    parser.add_argument("--gradient_checkpointing", action="store_true",
                        help="also measure ours with activation checkpointing (row ours+ckpt)")
    parser.add_argument("--profile", action="store_true", help="print ours' top kernels")
    parser.add_argument("--memory-of", choices=sorted(TRAINERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    notes: list[str] = []
    # the trainer's default precision as train() resolves it on this device (both loops use it)
    precision = effective_precision("bf16", device, notes.append)
    if args.memory_of:
        mem = trainer_memory(args.memory_of, args.variant, args.batch, args.clips, device, precision)
        print("memory " + json.dumps(mem))
        return
    for note in notes:
        print(f"note: {note}")
    if device.type == "cuda":
        defaults = [("small_16k", 16), ("large_44k", 4), ("large_44k", 16)]
    else:
        defaults = [("tiny_16k", 4)]
    configs = [(args.variant or v, args.batch or b) for v, b in defaults]
    configs = list(dict.fromkeys(configs))  # --variant/--batch given: fewer distinct ones
    dtype = compute_dtype(precision)
    ceiling = matmul_ceiling(device, dtype)
    print(f"device {device}, {precision}, random weights, LoRA r16 attn.qkv, {args.steps} steps x "
          f"{args.rounds} rounds (best kept); matmul ceiling {ceiling / 1e12:.2f} TFLOP/s ({dtype})")
    speedup = 0.0
    for variant, batch in configs:
        speedup = run_config(variant, batch, args, device, precision, ceiling)
        print(f"{variant}@{batch} ours (best row) / faithful: {speedup:.2f}x")
    print(f"speedup: {speedup:.2f}")


if __name__ == "__main__":
    main()
