"""How a run's child ended, in words: exit statuses, exception lines, SIGKILL verdicts.

`describe_exit`, `one_line` and `last_exception_line` make the one sentence a failed run
shows in `selvad status` (the traceback stays in the run's log).

A child killed by SIGKILL that the daemon did not send: the usual culprit is the kernel's
out-of-memory killer, and memory use varies from attempt to attempt (other processes, the
page cache), so such a run is queued again automatically, at most `len(KILL_RETRY_DELAYS)` times, each after its delay; the daemon goes on meanwhile
(the queue skips the run until its `not_before` time). After that the run fails with the
reason and what to change. Whether the OOM killer did it is read from the cgroup's
`oom_kill` counter (cgroup v2 `memory.events`, v1 `memory.oom_control`) before and after
the run; when no counter is readable the message says "out of memory?" as a guess.
"""

from __future__ import annotations

import re
import signal
import time
from dataclasses import fields
from pathlib import Path

from selva_engine.training.options import TrainConfig

__all__ = ["KILL_RETRY_DELAYS", "MESSAGE_LIMIT", "PROCESS", "REASON_LIMIT", "describe_exit", "kill_cause",
           "last_exception_line", "one_line", "oom_kill_count", "sigkill_verdict"]

KILL_RETRY_DELAYS = (30.0, 120.0)  # seconds before automatic retry 1, 2, ... of a killed run
MESSAGE_LIMIT = 300  # characters of a failed run's error sentence
REASON_LIMIT = 4000  # characters of the reason a failed run keeps (its page shows it whole)
CGROUP_ROOT = Path("/sys/fs/cgroup")
_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(: .*)?$")


PROCESS = {"train": "training", "extract": "extraction", "render": "render"}  # a run kind's process, in words


def describe_exit(code: int, kind: str = "train") -> str:
    """Words for a child's exit status (negative = killed by that signal); `kind` is the
    run's kind ("train" or "extract"), so the sentence names the right process."""
    process = PROCESS.get(kind, kind)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory? see dmesg)" if -code == signal.SIGKILL else ""
        return f"the {process} process was killed by {name}{hint}"
    return f"the {process} process exited with status {code}"


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """`text` (an exception's message, possibly several lines) as one line of at most
    `limit` characters, for `selvad status`."""
    flat = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def last_exception_line(lines: list[str]) -> str | None:
    """The last 'SomeError: message' line of a traceback in `lines` (stderr), if any."""
    for line in reversed(lines):
        if _EXC_LINE.match(line):
            return line.strip()
    return None


def _counter_files(proc_cgroup: str) -> list[Path]:
    files = []
    for line in proc_cgroup.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        rel = path.lstrip("/")
        if hier == "0":  # cgroup v2; in a container the mount may be the group itself
            files += [CGROUP_ROOT / rel / "memory.events", CGROUP_ROOT / "memory.events"]
        elif "memory" in controllers.split(","):
            files += [CGROUP_ROOT / "memory" / rel / "memory.oom_control",
                      CGROUP_ROOT / "memory" / "memory.oom_control"]
    return files


def oom_kill_count() -> int | None:
    """How many processes of this process's cgroup the OOM killer has killed so far (the
    cgroup's `oom_kill` counter), or None when no counter is readable."""
    try:
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    for path in _counter_files(proc_cgroup):
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    return None


def kill_cause(oom_before: int | None, oom_after: int | None) -> str:
    """Words for who sent the SIGKILL, from the cgroup's OOM-kill counter before and after
    the run (None: unreadable)."""
    if oom_before is None or oom_after is None:
        return "killed by SIGKILL (out of memory? see dmesg)"
    if oom_after > oom_before:
        return "killed by the kernel's out-of-memory killer"
    return "killed by SIGKILL from outside the daemon (no out-of-memory kill was counted; see dmesg)"


def _memory_fix() -> str:
    fix = "lower train.batch_size in the job file (saving it queues a new run)"
    names = {f.name for f in fields(TrainConfig)}
    if "activation_checkpointing" in names:
        fix += " or set train.activation_checkpointing = true"
    return fix


def sigkill_verdict(process: str, cause: str, auto_retries: int,
                    now: float | None = None) -> tuple[str, str, float | None]:
    """(state, message, retry_at) for a `process` ("training"/"extraction") child killed
    by SIGKILL (`cause` from kill_cause) after `auto_retries` automatic retries: "queued"
    with the time of the next retry, or "failed" with the fix once they are used up."""
    now = time.time() if now is None else now
    if auto_retries < len(KILL_RETRY_DELAYS):
        retry_at = now + KILL_RETRY_DELAYS[auto_retries]
        when = time.strftime("%H:%M:%S", time.localtime(retry_at))
        return ("queued", f"the {process} process was {cause}; retrying automatically at "
                f"{when} (automatic retry {auto_retries + 1} of {len(KILL_RETRY_DELAYS)})",
                retry_at)
    return ("failed", f"the {process} process was {cause}, again after {auto_retries} "
            f"automatic retries; if it runs out of memory, {_memory_fix()}", None)
