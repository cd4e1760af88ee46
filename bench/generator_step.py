"""Benchmark: forward + backward of a LoRA-wrapped small_16k-shaped generator at batch 4.

Random weights (no checkpoint needed). Measures our step (attention through
torch.nn.functional.scaled_dot_product_attention) against a baseline measured in the same
run: the same model with a naive per-head attention. Prints step time, samples/s and peak
memory for both, in fp32 and (on a GPU) bf16 autocast; the last line is `speedup: X.XX`
(ours over the baseline, in the main precision: bf16 on a GPU, fp32 on the CPU).

    python bench/generator_step.py [--variant small_16k] [--batch 4] [--steps 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from selva_engine.model.flow import FlowMatching
from selva_engine.model.generator import Generator
from selva_engine.model.layers import attention_backend
from selva_engine.model.lora import apply_lora, lora_parameters
from selva_engine.model.variants import get_variant


def random_model(variant: str, device: torch.device) -> Generator:
    """A frozen generator of `variant`'s shape with seeded random weights (no checkpoint)."""
    torch.manual_seed(0)
    model = Generator(**get_variant(variant).generator_kwargs())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
        model.latent_std.fill_(1.0)
        model.latent_mean.zero_()
    return model.requires_grad_(False).to(device)


def build(variant: str, device: torch.device) -> Generator:
    model = random_model(variant, device)
    apply_lora(model, rank=16, targets=["attn.qkv"])
    return model.train()


def step_time(model: Generator, variant: str, batch: int, steps: int, device: torch.device,
              dtype: torch.dtype, backend: str) -> tuple[float, float]:
    """Mean seconds per forward+backward and peak memory (MiB; CUDA only, else nan)."""
    v, seq = get_variant(variant), get_variant(variant).sequence()
    g = torch.Generator(device="cpu").manual_seed(1)
    x1 = torch.randn(batch, seq.latent_seq_len, v.latent_dim, generator=g).to(device)
    clip = torch.randn(batch, seq.clip_seq_len, v.clip_dim, generator=g).to(device)
    sync = torch.randn(batch, seq.sync_seq_len, v.sync_dim, generator=g).to(device)
    text = torch.randn(batch, v.text_seq_len, v.text_dim, generator=g).to(device)
    fm = FlowMatching()
    params = [p for group in lora_parameters(model) for p in group]
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())

    def one() -> None:
        x0 = torch.randn_like(x1)
        t = torch.rand(batch, device=device)
        with autocast, attention_backend(backend):
            v_pred = model(fm.path(x0, x1, t), clip, sync, text, t)
            loss = fm.loss(v_pred.float(), x0, x1).mean()
        loss.backward()
        for p in params:
            p.grad = None

    one()  # warm-up (allocator, kernels)
    one()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="small_16k")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    model = build(args.variant, device)
    precisions = [("fp32", torch.float32)]
    if device.type == "cuda":
        precisions.append(("bf16", torch.bfloat16))
    print(f"device {device}, variant {args.variant}-shaped (random weights), batch {args.batch}, "
          f"LoRA r16 on attn.qkv, {args.steps} timed steps")
    speedup = 1.0
    for label, dtype in precisions:
        # Interleave ours and the baseline and keep each one's best round, so that load
        # from other processes affects both alike.
        ours, base, ours_mem, base_mem = float("inf"), float("inf"), float("nan"), float("nan")
        for _ in range(args.rounds):
            t, ours_mem = step_time(model, args.variant, args.batch, args.steps, device, dtype, "sdpa")
            ours = min(ours, t)
            t, base_mem = step_time(model, args.variant, args.batch, args.steps, device, dtype, "naive")
            base = min(base, t)
        speedup = base / ours
        for name, secs, mem in (("ours (sdpa)", ours, ours_mem), ("baseline (naive)", base, base_mem)):
            print(f"{label:5s} {name:17s} step {secs * 1000:8.1f} ms  {args.batch / secs:7.2f} samples/s  "
                  + (f"peak {mem:8.1f} MiB" if mem == mem else "peak n/a (CPU)"))
        print(f"{label:5s} ratio ours/baseline: {speedup:.2f}x faster")
    print(f"speedup: {speedup:.2f}")


if __name__ == "__main__":
    main()
