"""An invalid job file's problems, every one, in `selvad status` (issues 21.4 and 22.2)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from selvad.cli import main
from selvad.datasets.watch import JobEvent
from selvad.runs.queue import RunQueue
from selvad.service.daemon import Daemon


def test_status_lists_every_problem_of_a_job_file(make_config: Callable[[str], Path],
                                                   tmp_path: Path, capsys) -> None:
    config = make_config("")
    (tmp_path / "datasets" / "birds").mkdir()
    d = Daemon(config)
    d.queue = RunQueue(d.cfg.paths.queue_path)
    path = tmp_path / "jobs" / "hostile.toml"
    path.write_text('dataset = "birds"\npriority = 9223372036854775808\nrank = 8\n'
                    '[train]\nlr = nan\nseed = 18446744073709551616\nbatch_size = 1000000\n'
                    '[trigger]\nsettle_minutes = inf\n')
    d.events.handle(JobEvent(path, "created"))
    assert "hostile" not in d.jobs
    capsys.readouterr()
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"problem: job hostile: 6 problems; fix the job file, the daemon picks it up when " \
           f"saved: ({path})" in out, out
    for key in ("priority", "rank", "train.lr", "train.seed", "train.batch_size",
                "trigger.settle_minutes"):
        assert f"  {path}:{key}: " in out, (key, out)
    assert "more" not in out


def test_a_deeply_nested_job_file_is_one_status_line(make_config: Callable[[str], Path],
                                                     tmp_path: Path, capsys) -> None:
    config = make_config("")
    d = Daemon(config)
    d.queue = RunQueue(d.cfg.paths.queue_path)
    path = tmp_path / "jobs" / "deep.toml"
    path.write_text('dataset = "birds"\nx = ' + "[" * 5000 + "]" * 5000 + "\n")
    d.events.handle(JobEvent(path, "created"))
    capsys.readouterr()
    assert main(["status", "--config", str(config)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "deep.toml" in line]
    assert len(lines) == 1 and "nested too deeply" in lines[0], lines


class WebServer:  # stands in for selvad.web.server.WebServer (recorded by class name)
    port_taken = True

    def start(self) -> None:
        if self.port_taken:
            raise OSError("the web page cannot listen on 127.0.0.1:8765 (Address already in use); "
                          "set [web] listen to a free port or enabled = false")


def test_status_says_when_the_page_is_not_served(make_config: Callable[[str], Path],
                                                 capsys) -> None:
    config = make_config("")
    d = Daemon(config)
    d.queue = RunQueue(d.cfg.paths.queue_path)
    d.companions = [WebServer()]
    d._start_companions()
    capsys.readouterr()
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert ("problem: page 127.0.0.1:8765: not served: the web page cannot listen on "
            "127.0.0.1:8765 (Address already in use); set [web] listen to a free port") in out, out
    d.companions[0].port_taken = False  # freed: the next start serves and clears it
    d._start_companions()
    assert main(["status", "--config", str(config)]) == 0
    assert "problem: page" not in capsys.readouterr().out


def test_status_tells_a_stopped_daemon_from_an_idle_one(make_config: Callable[[str], Path],
                                                         tmp_path: Path, capsys) -> None:
    """22.4: no daemon holds the state lock: "not running" with the requests waiting, not
    "idle"; a run the daemon answered "cancelling" says so, with its last checkpoint."""
    config = make_config("")
    q = RunQueue(tmp_path / "state" / "queue.sqlite3")
    run = q.enqueue("birds", "birds", {"steps": 200}, {"files": []})
    q.claim(run.id)
    q.set_state(run.id, "training")
    out_dir = tmp_path / "out" / "birds" / run.id
    out_dir.mkdir(parents=True)
    for step in (50, 100):
        (out_dir / f"adapter_step{step:05d}.pt").write_bytes(b"x")
    q.connection().execute("UPDATE runs SET output_dir = ? WHERE id = ?", (str(out_dir), run.id))
    req = q.request("cancel", run_id=run.id)
    q.connection().execute("UPDATE requests SET handled_at = 1, result = ? WHERE id = ?",
                           (f"cancelling {run.id} on cpu#0: it saves a checkpoint and stops", req))
    q.request("enqueue", job="birds")
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"daemon: not running (1 request waiting); start it with `systemctl start selvad` " \
           f"or `selvad run --config {config}`" in out, out
    assert "(idle)" not in out
    assert "training (cancelling: saving a checkpoint, then it stops)" in out, out
    assert "  last checkpoint: step 100 (adapter_step00100.pt)" in out, out
