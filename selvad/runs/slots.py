"""Device slots: where runs execute on this machine, one run per slot at a time.

`[device] name` in the daemon config is one name ("auto", "cpu", "cuda", "cuda:N"), "all"
(every GPU of the machine) or a list (`["cuda:0", "cuda:1"]`, or `["cpu", "cpu"]`: two
concurrent CPU runs, which is how the scheduler is tested without a GPU). Each slot holds
exactly one run, training or extraction alike, so a GPU never has two jobs on it: an
extraction run takes a free slot like a training run, in queue order (extraction first,
then priority, then age). A run's child is pinned to its slot's GPU with
CUDA_VISIBLE_DEVICES (mapped through the daemon's own CUDA_VISIBLE_DEVICES, if it has
one), so inside the child the GPU is always "cuda". With several slots, each child's torch
uses an equal share of the CPU cores.

`resolve_slots` checks the names against the machine (a GPU index it does not have is a
`DeviceError` whose message says the fix); the config parser only checks the syntax, so a
config can be validated on another machine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from selvad.config.daemon import device_name_problem, is_gpu_name

__all__ = ["DeviceError", "Slot", "gpu_count", "resolve_slots"]


class DeviceError(ValueError):
    """`[device] name` names a device this machine does not have; the message says the fix."""


@dataclass(frozen=True)
class Slot:
    """One place a run executes: `label` is what `selvad status` and the logs show
    ("cuda:1", "cpu#0"), `device` the child's TrainConfig.device ("cuda", "cpu", "auto")
    and `env` the extra environment of the child (CUDA_VISIBLE_DEVICES)."""

    label: str
    device: str
    env: Mapping[str, str] = field(default_factory=dict)


def gpu_count() -> int:
    """How many CUDA GPUs this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _gpu_slot(index: int, visible: str | None) -> Slot:
    physical = str(index)
    if visible:  # the daemon itself is limited to some GPUs: index into its list
        physical = [v.strip() for v in visible.split(",")][index]
    return Slot(f"cuda:{index}", "cuda", {"CUDA_VISIBLE_DEVICES": physical})


def resolve_slots(names: tuple[str, ...], count: Callable[[], int] = gpu_count,
                  visible: str | None = None) -> list[Slot]:
    """The slots of `[device] name` on this machine, in order. `count` says how many GPUs
    there are (asked only when a GPU is named); `visible` is the daemon's
    CUDA_VISIBLE_DEVICES (default: from the environment). Raises DeviceError saying what
    is wrong and what to write instead."""
    problem = device_name_problem(names)
    if problem:
        raise DeviceError(f"device.name {problem}: {list(names)}")
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if names == ("all",):
        n = count()
        if n == 0:
            raise DeviceError('device.name = "all" but this machine has no CUDA GPU; '
                              'write name = "cpu" (or install the GPU driver)')
        return [_gpu_slot(i, visible) for i in range(n)]
    if len(names) == 1 and not is_gpu_name(names[0]):
        return [Slot(names[0], names[0])]
    if any(is_gpu_name(n) for n in names):
        n = count()
        missing = [name for name in names if is_gpu_name(name) and int(name[5:]) >= n]
        if missing:
            have = ", ".join(f'"cuda:{i}"' for i in range(n))
            fix = (f"list only {have}, or write \"all\"" if n else
                   'write name = "cpu" (or install the GPU driver)')
            raise DeviceError(f"device.name names {', '.join(map(repr, missing))} but this "
                              f"machine has {n} CUDA GPU(s); {fix}")
    cpus = sum(n == "cpu" for n in names)
    out, k = [], 0
    for name in names:
        if name == "cpu":
            out.append(Slot("cpu" if cpus == 1 else f"cpu#{k}", "cpu"))
            k += 1
        else:
            out.append(_gpu_slot(int(name[5:]), visible))
    return _share_cores(out) if len(out) > 1 else out


def _share_cores(slots: list[Slot]) -> list[Slot]:
    """Several slots: each child's torch gets an equal share of this process's CPU cores
    (OMP_NUM_THREADS / MKL_NUM_THREADS), where every child would otherwise start one thread
    per core and the runs would slow each other down by oversubscription. A thread count
    the daemon was started with is kept."""
    if "OMP_NUM_THREADS" in os.environ:
        return slots
    share = str(max(1, len(os.sched_getaffinity(0)) // len(slots)))
    threads = {"OMP_NUM_THREADS": share, "MKL_NUM_THREADS": share}
    return [Slot(s.label, s.device, {**s.env, **threads}) for s in slots]
