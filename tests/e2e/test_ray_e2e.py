"""End-to-end on a real Ray cluster of several nodes on this machine (ray.cluster_utils):
the daemon places two runs on two nodes at once, a node killed mid-run has its run resumed
on another node from its checkpoint, cancel stops the remote child; and a daemon whose
`[executor] kind = "ray"` cannot work (storage a node does not see, Ray not installed)
refuses to start with the fix (exit 78). About 50 s on 2 cores, cluster starts included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO, DaemonTree, scaled

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

MiB = 1 << 20
# every Ray process binds the loopback address (Ray would take the machine's LAN address)
LOOPBACK = {"node_ip_address": "127.0.0.1"}
NODE = {"num_cpus": 1, "object_store_memory": 80 * MiB, **LOOPBACK}  # one run per node (resource CPU)


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A head node that runs nothing (0 CPUs) and two worker nodes of one CPU each."""
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": 80 * MiB, **LOOPBACK})
    for _ in range(2):
        c.add_node(**NODE)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def _use_ray(tree: DaemonTree, address: str) -> None:
    text = tree.config.read_text()
    tree.config.write_text(text + f'[executor]\nkind = "ray"\naddress = "{address}"\n'
                                  'resource = "CPU"\n')


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _progress_steps(run_dir: Path) -> list[int]:
    events = [json.loads(x) for x in (run_dir / "progress.jsonl").read_text().splitlines() if x]
    return [e["step"] for e in events if e.get("event", "progress") == "progress"]


@pytest.mark.slow
def test_two_nodes_node_loss_resumes_cancel_stops_remote_run(cluster, tree: DaemonTree) -> None:
    _use_ray(tree, cluster.address)
    tree.add_clips("alpha", 3, seed=1)
    tree.add_clips("beta", 3, seed=2)
    tree.write_job("alpha", "alpha", steps=40, save_every=10, log_every=2)
    tree.write_job("beta", "beta", steps=400, save_every=10, log_every=2)
    tree.start()
    [ready] = tree.wait_for(lambda: tree.events("daemon.executor"), 90, "daemon.executor")
    assert ready["kind"] == "ray" and ready["capacity"] == 2

    def both_training():
        runs = [r for r in tree.runs(kind="train") if r.state == "training"
                and (r.device or "").startswith("ray:") and (r.step or 0) >= 2]
        return runs if len(runs) == 2 else None

    a, b = sorted(tree.wait_for(both_training, 240, "two runs training on Ray"),
                  key=lambda r: r.job)
    assert a.device != b.device, "placed on two nodes at once"
    status = tree.cli("status").stdout
    assert f"on {a.device}" in status and f"on {b.device}" in status, status

    # kill alpha's node once alpha has a checkpoint: Ray reports the actor lost, the run
    # is queued again and resumes on a new node from that checkpoint
    a_dir = tree.root / "out" / "alpha" / a.id
    tree.wait_for(lambda: list(a_dir.glob("adapter_step*.pt")), 120, "alpha's checkpoint")
    node_id = a.device.split(":")[2]
    [victim] = [n for n in cluster.worker_nodes if n.node_id.startswith(node_id)]
    cluster.remove_node(victim)
    lost = tree.wait_for(lambda: [e for e in tree.events("run.state") if e["run_id"] == a.id
                                  and e["state"] == "queued" and "error" in e], 60,
                         "alpha requeued")
    assert "Ray lost the run" in lost[0]["error"], lost[0]
    cluster.add_node(**NODE)
    tree.wait_for(lambda: tree.events("ray.node_joined"), 60, "the new node's storage check")
    done = tree.wait_state(a.id, ("done", "failed"), 240)
    assert done.state == "done", done.error
    assert done.device != a.device and done.attempts == 2
    [resumed] = [e for e in tree.events("run.resumed") if e["run_id"] == a.id]
    assert resumed["step"] >= 10
    steps = _progress_steps(a_dir)
    assert steps[-1] == 40 and set(range(2, 41, 2)) <= set(steps), steps  # nothing lost
    assert (a_dir / "adapter_final.pt").is_file()

    # cancel beta through the daemon: the remote child checkpoints and stops
    assert tree.queue.get(b.id).state == "training"
    [started] = [e for e in tree.events("run.child_started") if e["run_id"] == b.id]
    assert _alive(started["pid"])
    cancel = tree.cli("cancel", b.id)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    tree.wait_state(b.id, ("cancelled",), 90)
    tree.wait_for(lambda: not _alive(started["pid"]), 30, "beta's remote child to stop")
    assert list((tree.root / "out" / "beta" / b.id).glob("adapter_step*.pt"))
    tree.signal(15)
    assert tree.wait_exit(60) == 0


def test_storage_a_node_does_not_see_refuses_to_start(monkeypatch: pytest.MonkeyPatch,
                                                      tree: DaemonTree) -> None:
    """The daemon's output root is a tmpfs in a mount namespace of its own, so the Ray node
    sees another (empty) directory at that path: the start-up check names it, exit 78."""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a mount namespace here (needs root): unshare -m")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "object_store_memory": 80 * MiB, **LOOPBACK})
    try:
        _use_ray(tree, c.address)
        out = tree.root / "out"
        script = (f"mount -t tmpfs -o size=16m tmpfs {out} && exec {sys.executable} -m "
                  f"selvad.cli run --config {tree.config}")
        with open(tree.log_path, "ab") as log:
            proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                   script], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                  timeout=scaled(180))
        assert proc.returncode == 78, tree.log_tail()
        [ev] = tree.events("daemon.bad_executor")
        assert "do not see the daemon's storage" in ev["message"], ev["message"]
        assert f"{out}/.selvad-storage-check: No such file" in ev["message"]
        assert "same paths on every node" in ev["message"]
    finally:
        c.shutdown()


def test_ray_not_installed_refuses_to_start(tree: DaemonTree, tmp_path: Path) -> None:
    _use_ray(tree, "auto")
    shadow = tmp_path / "no-ray" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    tree.start(env=env)
    assert tree.wait_exit(120) == 78
    [ev] = tree.events("daemon.bad_executor")
    assert str(tree.config) in ev["message"] and "pip install 'selvad[ray]'" in ev["message"]
