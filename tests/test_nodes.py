"""Several nodes under torchrun, and torchrun's restarts: two torchrun agents on this CPU, each in a
folder of its own, stand in for two machines that share nothing but the network."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMALL, make_idx_dataset, wait_for
from vae_tui.launch.elastic import data_print, data_refusal, pick_writer
from vae_tui.runfile import control
from vae_tui.runfile.files import read_status
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.metrics import read_metrics
from vae_tui.runfile.schema import RunState
from vae_tui.training.checkpoint import load_checkpoint
from vae_tui.training.roll_call import roll_call


def env() -> dict[str, str]:
    """The test's environment as it is now (its own cache folder), one thread a rank."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nodes:
    """`torchrun --nnodes 2 ...` typed on two machines: static ranks (--node-rank) or c10d rendezvous."""

    def __init__(self, root: Path, *options: str, rdzv: str = "static", restarts: int = 0, data: bool = False) -> None:
        port, self.folders, self.procs = free_port(), [root / "node0", root / "node1"], []
        for node, folder in enumerate(self.folders):
            folder.mkdir(parents=True, exist_ok=True)
            launch = (
                ["--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port)]
                if rdzv == "static"
                else ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "job"]
            )
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                *launch,
                "--nproc-per-node",
                "1",
                "--max-restarts",
                str(restarts),
                "-m",
                "vae_tui",
                "train",
                *SMALL,
                "--iw-samples",
                "0",
                *options,
            ]
            self.procs.append(
                subprocess.Popen(command, cwd=folder, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            )

    def run(self) -> Path:
        """The run directory, wherever rank 0 made it."""
        wait_for(lambda: any(any(f.glob("runs/*/config.json")) for f in self.folders), "a run directory", proc=self.procs[0])
        return next(p.parent for f in self.folders for p in f.glob("runs/*/config.json"))

    def worker(self, node: int) -> int:
        children = Path(f"/proc/{self.procs[node].pid}/task/{self.procs[node].pid}/children")
        wait_for(lambda: children.exists() and children.read_text().split(), f"node {node}'s worker", proc=self.procs[node])
        return int(children.read_text().split()[0])

    def finish(self, timeout: float = 120) -> list[str]:
        try:
            return [proc.communicate(timeout=timeout)[0] for proc in self.procs]
        finally:
            self.kill()

    def kill(self) -> None:
        """Both agents and their workers (each worker is in the agent's session), whatever is left."""
        for proc in self.procs:
            if proc.poll() is None:
                children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
                workers = children.read_text().split() if children.exists() else []
                for pid in workers:  # torchrun starts them in sessions of their own
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()


@pytest.fixture
def two_nodes(tmp_path: Path):
    made: list[Nodes] = []

    def start(*options: str, **how) -> Nodes:
        made.append(Nodes(tmp_path, *options, **how))
        return made[-1]

    yield start
    for nodes in made:  # a test that failed half-way leaves nothing running
        nodes.kill()


def steps_of(run: Path) -> list[int]:
    return [int(s) for s in read_metrics(run / "metrics.jsonl").covered_steps()]


def events_of(run: Path, kind: str) -> list[dict]:
    path = run / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


def trained(run: Path, step: int = 0):
    return lambda: (s := read_status(RunDir(run))[0]) is not None and s.state == RunState.TRAINING and s.step > step


def test_a_killed_rank_on_node_1_is_restarted_by_torchrun_and_the_run_resumes_by_itself(two_nodes) -> None:
    nodes = two_nodes("--epochs", "120", "--checkpoint-every", "1s", restarts=2)
    run = nodes.run()
    wait_for(lambda: (run / "checkpoints" / "last.pt").exists() and read_status(RunDir(run))[0].step > 30, "a checkpoint", proc=nodes.procs[0])
    os.kill(nodes.worker(1), signal.SIGKILL)
    outs = nodes.finish()
    assert [p.returncode for p in nodes.procs] == [0, 0], outs
    status = read_status(RunDir(run))[0]
    assert status.state == RunState.FINISHED and steps_of(run) == list(range(1, status.step + 1))  # every step once
    restarts = events_of(run, "restart")
    assert len(restarts) == 1 and "resumed from step" in restarts[0]["message"], restarts
    assert "restarted by torchrun" in outs[0] and "torchrun restarts the ranks (restart 1 of 2)" in outs[0]
    where = f"the run is written by rank 0 on {socket.gethostname()} in {run.resolve()}"
    assert where in outs[0] and where in outs[1]  # every node says where the run is
    assert not (nodes.folders[1] / "runs").exists()  # node 1 writes nothing
    assert "Traceback" not in outs[0] + outs[1]
    node1 = subprocess.run([sys.executable, "-m", "vae_tui", "watch"], cwd=nodes.folders[1], env=env(), capture_output=True, text=True, timeout=60)
    assert node1.returncode != 0 and where in node1.stderr and len(node1.stderr.strip().splitlines()) == 1, node1.stderr


def test_under_c10d_rendezvous_the_run_is_where_rank_0_is_and_a_watcher_steers_both_nodes(two_nodes) -> None:
    nodes = two_nodes("--epochs", "3000", rdzv="c10d")
    run = nodes.run()
    wait_for(trained(run, 20), "training", proc=nodes.procs[0])
    control.send(RunDir(run), "pause")
    wait_for(lambda: read_status(RunDir(run))[0].state == RunState.PAUSED, "the paused state", proc=nodes.procs[0])
    held = read_status(RunDir(run))[0].step
    done = subprocess.run([sys.executable, "-m", "vae_tui", "set", str(run), "--lr", "0.003"], env=env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: read_status(RunDir(run))[0].changes, "the change taken while paused", proc=nodes.procs[0])
    control.send(RunDir(run), "resume")
    wait_for(trained(run, held + 20), "steps after the resume", proc=nodes.procs[0])
    control.send(RunDir(run), "stop")
    outs = nodes.finish()
    assert [p.returncode for p in nodes.procs] == [0, 0], outs  # a rank at another step would have hung or failed
    status = read_status(RunDir(run))[0]
    assert status.state == RunState.STOPPED and status.changes[-1] == {"step": held, "lr": 0.003}
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == status.step and steps_of(run) == list(range(1, status.step + 1))
    node = 0 if run.is_relative_to(nodes.folders[0]) else 1
    where = f"the run is written by rank 0 on {socket.gethostname()} in {run.resolve()}"
    assert where in outs[0] and where in outs[1] and not (nodes.folders[1 - node] / "runs").exists()


def test_restarts_used_up_end_the_run_in_one_line_with_its_checkpoint_intact(two_nodes) -> None:
    nodes = two_nodes("--epochs", "3000", "--checkpoint-every", "1s", restarts=1)
    run = nodes.run()
    wait_for(lambda: (run / "checkpoints" / "last.pt").exists(), "a checkpoint", proc=nodes.procs[0])
    os.kill(nodes.worker(1), signal.SIGKILL)
    wait_for(lambda: events_of(run, "restart") and trained(run)(), "the restarted run training", proc=nodes.procs[0])
    wait_for(
        lambda: load_checkpoint(run / "checkpoints" / "last.pt")["step"] > int(events_of(run, "restart")[0]["message"].rsplit(" ", 1)[-1].replace(",", "")),
        "a checkpoint after the restart",
        proc=nodes.procs[0],
    )
    os.kill(nodes.worker(1), signal.SIGKILL)
    outs = nodes.finish()
    assert all(p.returncode != 0 for p in nodes.procs)
    lines = [line for line in outs[0].splitlines() if line.startswith("vae-tui: error:")]
    assert lines and "restart is used up" in lines[-1] and "vae-tui train --resume" in lines[-1], outs[0][-3000:]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] > 0


def test_a_node_with_other_data_is_refused_on_every_node_before_training(tmp_path: Path, two_nodes) -> None:
    for node, n_train in enumerate((40, 36)):
        make_idx_dataset(tmp_path / f"node{node}" / "data", n_train=n_train)
    nodes = two_nodes("--dataset", "mnist", "--data-dir", "data", "--epochs", "5")
    outs = nodes.finish()
    assert [p.returncode for p in nodes.procs] != [0, 0]
    for out in outs:
        said = [line for line in out.splitlines() if line.startswith("vae-tui: error:")]
        assert len(said) == 1 and "rank 1 on" in said[0] and "36 training" in said[0] and "40" in said[0], out[-2000:]
    assert not (nodes.folders[0] / "runs").exists() or not any((nodes.folders[0] / "runs").iterdir())


# -- the parts, without processes ---------------------------------------------------------------
class FakeStore:
    """A key-value store as torchrun's TCPStore keeps it: across restarts, with what dead workers left."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def set(self, key: str, value: str | bytes) -> None:
        self.data[key] = value.encode() if isinstance(value, str) else value

    def get(self, key: str) -> bytes:
        return self.data[key]

    def check(self, keys: list[str]) -> bool:
        return all(k in self.data for k in keys)


def test_a_roll_call_never_takes_what_a_dead_round_left_in_the_store() -> None:
    import threading

    store = FakeStore()
    first = {}
    threads = [threading.Thread(target=lambda r=r: first.__setitem__(r, roll_call(store, r, 3))) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(set(first.values())) == 1  # one prefix for the round
    # The next round: rank 1 starts long before rank 0 (whose old token and "go" are still there).
    second = {}
    late = threading.Thread(target=lambda: second.__setitem__(1, roll_call(store, 1, 3)))
    late.start()
    late.join(0.5)
    assert late.is_alive()  # not fooled by the last round's leader and go
    others = [threading.Thread(target=lambda r=r: second.__setitem__(r, roll_call(store, r, 3))) for r in (0, 2)]
    for t in others:
        t.start()
    for t in [late, *others]:
        t.join(10)
    assert len(set(second.values())) == 1 and second[0] != first[0]


def test_a_roll_call_that_waits_too_long_says_who_is_missing() -> None:
    from vae_tui.errors import VaeTuiError

    now = [0.0]
    with pytest.raises(VaeTuiError, match="rank 0 waited 60 s for ranks 1, 2 to start"):
        roll_call(FakeStore(), 0, 3, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + 1), limit=60)


def test_the_writer_after_a_restart_is_the_rank_with_the_newest_checkpoint() -> None:
    assert pick_writer([None, None]) == 0
    assert pick_writer([None, (300, "/b"), (300, "/c"), (120, "/a")]) == 1
    assert pick_writer([(0, "/a"), None]) == 0


def test_data_that_differs_between_ranks_is_named_in_one_line(digits) -> None:
    import dataclasses

    same = data_print(digits)
    fewer = data_print(dataclasses.replace(digits, train_x=digits.train_x[:-10], train_y=digits.train_y[:-10]))
    shuffled = data_print(dataclasses.replace(digits, train_x=digits.train_x[::-1].copy()))
    assert data_refusal([same, same], 0) is None
    assert "rank 1 on" in data_refusal([same, fewer], 0) and "1,490 training" in data_refusal([same, fewer], 0)
    assert "other ones (or in another order)" in data_refusal([same, shuffled], 0)


def test_a_lost_peer_is_said_whole_with_what_torchrun_does_next(monkeypatch) -> None:
    from vae_tui.training.world import World, lost_peer

    error = RuntimeError(
        "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:37099: "
        "Connection reset by peer. This is typically caused by a remote worker hanging up"
    )
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    said = lost_peer(World(0, 2), error)
    assert said == (
        "another rank of this run ended or was killed (its connection closed), so rank 0 stops too; nothing "
        "after the last checkpoint was saved; torchrun restarts the ranks (restart 1 of 2) and the run resumes "
        "from its last checkpoint"
    )
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert "torchrun's 2 restarts are used up" in lost_peer(World(0, 2), error)


def test_runs_show_no_rate_for_ranks_that_no_longer_train() -> None:
    from vae_tui.runfile.schema import Status, ranks_words

    ranks = [{"device": "cpu", "samples_per_s": 612.0}, {"device": "cpu", "samples_per_s": 598.0}]
    assert ranks_words(Status(state=RunState.TRAINING, world_size=2, ranks=ranks)) == "2 ranks: 612 + 598/s"
    assert ranks_words(Status(state=RunState.FINISHED, world_size=2, ranks=ranks)) == "2 ranks"


def test_a_node_without_the_data_is_one_line_there_and_one_on_the_writer(tmp_path: Path, two_nodes) -> None:
    make_idx_dataset(tmp_path / "node0" / "data", n_train=40)  # node 1 has none (and cannot download it here)
    nodes = two_nodes("--dataset", "mnist", "--data-dir", "data", "--epochs", "5")
    outs = nodes.finish()
    said = [[line for line in out.splitlines() if line.startswith("vae-tui: error:")] for out in outs]
    assert len(said[1]) == 1 and said[1][0].startswith("vae-tui: error: rank 1: ") and "mnist" in said[1][0], outs[1][-2000:]
    assert len(said[0]) == 1 and "another rank of this run ended" in said[0][0], outs[0][-2000:]
    assert not any('File "/' in line and "vae_tui" in line for out in outs for line in out.splitlines())  # no traceback of ours
