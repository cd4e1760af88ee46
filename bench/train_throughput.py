"""Benchmark: trainer step throughput (samples/s) and peak memory, ours vs the original loop.

The baseline follows ComfyUI-SelVA's train_lora.py loop, measured in the same run on the
same model: one clip per forward pass (batch assembled clip by clip, gradients summed),
features moved from host memory to the device at every step, conditions recomputed inside
every forward, and the whole generator cast to the training dtype (LoRA weights included).
Ours: one batched forward, all clip tensors resident on the device, conditions
preprocessed once per clip, fp32 LoRA weights under bf16 autocast on a GPU.

CPU: the tiny_16k variant. GPU: small_16k-shaped random weights. Both run the trainer's
default precision as train() resolves it on the device: bf16 on a GPU and on a CPU with
native bf16 (AVX512-BF16 / AMX), else fp32. Ours stores the frozen weights in that dtype once
(`store_frozen_in_compute_dtype`) and autocasts; the baseline casts everything.
The last line is `speedup: X.XX` (ours over the baseline). Target: >= 2 at batch 4.

Peak memory is what each trainer adds over the base model (its model copy, optimizer state
and step activations), measured alone in a child process: on a GPU the allocator's peak, on
the CPU the peak RSS. Batching trades memory for speed: activations of the whole batch are
alive at once.

    python bench/train_throughput.py [--batch 4] [--steps 10] [--rounds 3] [--device auto]
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from generator_step import random_model  # bench/ is on sys.path when a bench script runs

from selva_engine.model.flow import FlowMatching
from selva_engine.model.generator import Generator
from selva_engine.model.lora import apply_lora, lora_parameters
from selva_engine.model.variants import get_variant
from selva_engine.training.loop import (
    StepRunner,
    autocast_for,
    effective_precision,
    make_scheduler,
    store_frozen_in_compute_dtype,
)
from selva_engine.training.options import TrainConfig


def dataset(variant: str, clips: int) -> list[dict[str, np.ndarray]]:
    v, s = get_variant(variant), get_variant(variant).sequence()
    rng = np.random.default_rng(0)
    return [{"x1": rng.standard_normal((s.latent_seq_len, v.latent_dim)).astype(np.float32),
             "clip": rng.standard_normal((s.clip_seq_len, v.clip_dim)).astype(np.float32),
             "sync": rng.standard_normal((s.sync_seq_len, v.sync_dim)).astype(np.float32),
             "text": rng.standard_normal((v.text_seq_len, v.text_dim)).astype(np.float32)}
            for _ in range(clips)]


class Ours:
    """Our trainer's step: selva_engine.training.loop.StepRunner, set up as train() sets it up
    (clip tensors resident on the device, conditions preprocessed once, fp32 LoRA weights,
    autocast in the low precision, AdamW with the LoRA+ groups and the LR schedule)."""

    def __init__(self, base: Generator, data, device, precision: str) -> None:
        cfg = TrainConfig(batch_size=len(data), precision=precision, warmup_steps=0)
        self.model = copy.deepcopy(base)
        apply_lora(self.model, rank=16, targets=["attn.qkv"], dtype=torch.float32)
        self.model.train()
        store_frozen_in_compute_dtype(self.model, precision)
        a, b = lora_parameters(self.model)
        optimizer = torch.optim.AdamW([{"params": a, "lr": cfg.lr}, {"params": b, "lr": cfg.lr}],
                                      weight_decay=cfg.weight_decay)
        autocast = autocast_for(device, precision)
        stack = {k: torch.from_numpy(np.stack([d[k] for d in data])).to(device) for k in data[0]}
        with torch.no_grad(), autocast:
            cond = self.model.preprocess_conditions(stack["clip"], stack["sync"], stack["text"])
        self.runner = StepRunner(
            self.model, FlowMatching(), cfg, lat_mean=stack["x1"], lat_std=torch.zeros_like(stack["x1"]),
            conditions=cond.index, autocast=autocast,
            scaler=torch.amp.GradScaler(device.type, enabled=False), optimizer=optimizer,
            scheduler=make_scheduler(optimizer, cfg), params=a + b,
            gen_t=torch.Generator().manual_seed(0), gen_noise=torch.Generator().manual_seed(1))
        self.steps, self.log_every = 0, cfg.log_every

    def step(self, idx: list[int]) -> None:
        self.runner.micro_step(idx)
        self.runner.optimizer_step()
        self.steps += 1
        if self.steps % self.log_every == 0:  # train() reads losses back once per log interval
            self.runner.flush(self.steps)


class Baseline:
    """The original loop: per-clip forwards, per-step host->device copies, recomputed
    conditions, wholesale dtype cast (LoRA weights and AdamW state in that dtype)."""

    def __init__(self, base: Generator, data, device, precision: str) -> None:
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.model = copy.deepcopy(base)
        apply_lora(self.model, rank=16, targets=["attn.qkv"])
        self.model.to(self.dtype).train()
        a, b = lora_parameters(self.model)
        self.params = a + b
        self.opt = torch.optim.AdamW(self.params, lr=1e-4)
        self.data, self.device = data, device
        self.fm = FlowMatching()
        self.g = torch.Generator().manual_seed(0)

    def step(self, idx: list[int]) -> None:
        for j in idx:
            item = {k: torch.from_numpy(v)[None].to(self.device, self.dtype) for k, v in self.data[j].items()}
            x1 = self.model.normalize(item["x1"])
            x0 = torch.randn(x1.shape, generator=self.g).to(self.device, self.dtype)
            t = torch.rand(1, generator=self.g).to(self.device, self.dtype)
            v = self.model(self.fm.path(x0, x1, t), item["clip"], item["sync"], item["text"], t)
            (self.fm.loss(v.float(), x0.float(), x1.float()).mean() / len(idx)).backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def measure(trainer, batch: int, clips: int, steps: int, device: torch.device) -> float:
    """samples/s over `steps` steps after two warm-up steps."""
    order = [[(s * batch + k) % clips for k in range(batch)] for s in range(steps + 2)]
    trainer.step(order[0])
    trainer.step(order[1])
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for idx in order[2:]:
        trainer.step(idx)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def trainer_memory_mib(name: str, variant: str, args, device: torch.device, precision: str) -> float:
    """Peak memory one trainer adds over the base model: its model copy, optimizer state and
    step activations, with nothing else resident. Runs in this (fresh) process: CUDA reads
    the allocator's peak, the CPU the peak RSS (VmHWM, reset through /proc/self/clear_refs)."""
    base = random_model(variant, device)
    data = dataset(variant, args.clips)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        before = _proc_status_kib("VmRSS") * 1024
    trainer = {"ours": Ours, "baseline": Baseline}[name](base, data, device, precision)
    measure(trainer, args.batch, args.clips, 3, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _proc_status_kib("VmHWM") * 1024
    return (peak - before) / 2**20


def memory_in_child(name: str, argv: list[str]) -> float:
    """trainer_memory_mib of `name` measured in a child process (nan if that fails)."""
    try:
        out = subprocess.run([sys.executable, __file__, *argv, "--memory-of", name],
                             capture_output=True, text=True, check=False, timeout=900)
    except subprocess.TimeoutExpired:
        print(f"note: memory of {name} not measured: the child took over 900 s")
        return float("nan")
    for line in out.stdout.splitlines():
        if line.startswith("memory_mib "):
            return float(line.split()[1])
    print(f"note: memory of {name} not measured: {out.stderr.strip()[-300:]}")
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--memory-of", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    variant = "small_16k" if device.type == "cuda" else "tiny_16k"
    # the trainer's default precision as train() resolves it on this device (both loops use it)
    notes: list[str] = []
    precision = effective_precision("bf16", device, notes.append)
    if args.memory_of:
        print(f"memory_mib {trainer_memory_mib(args.memory_of, variant, args, device, precision):.3f}")
        return
    for note in notes:
        print(f"note: {note}")
    base = random_model(variant, device)
    data = dataset(variant, args.clips)
    print(f"device {device}, {variant}-shaped random weights, {precision}, batch {args.batch}, "
          f"LoRA r16 attn.qkv, {args.steps} steps x {args.rounds} rounds (best round kept)")
    best = {"ours": 0.0, "baseline": 0.0}
    trainers = {"ours": Ours(base, data, device, precision), "baseline": Baseline(base, data, device, precision)}
    for _ in range(args.rounds):  # interleaved so that machine load affects both alike
        for name, trainer in trainers.items():
            best[name] = max(best[name], measure(trainer, args.batch, args.clips, args.steps, device))
    del trainers, base
    if device.type == "cuda":
        torch.cuda.empty_cache()  # leave the GPU to the measuring children
    child_argv = ["--batch", str(args.batch), "--clips", str(args.clips), "--device", str(device)]
    kind = "GPU allocated" if device.type == "cuda" else "RSS"
    for name, rate in best.items():
        mem = memory_in_child(name, child_argv)
        print(f"{name:9s} {rate:8.2f} samples/s  peak +{mem:7.1f} MiB {kind} over the base model")
    print(f"speedup: {best['ours'] / best['baseline']:.2f}")


if __name__ == "__main__":
    main()
