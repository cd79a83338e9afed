"""Shared fixtures and helpers: small data made on the spot (never a download), reference runs made
once per pytest run, waits that say what they waited for, and a torch-free fake run for the monitor."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import os
import pty
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from vae_tui.runfile import control
from vae_tui.runfile.files import Snapshot, append_events, write_analysis, write_config, write_snapshot, write_status
from vae_tui.runfile.layout import RunDir, open_run_dir
from vae_tui.runfile.metrics import MetricsWriter, batch_lines, epoch_line, read_metrics
from vae_tui.runfile.schema import Event, RunInfo, RunState, Status
from vae_tui.training.controls import Controls, held, take_requests
from vae_tui.watching.follow import RunWatch

ROOT = Path(__file__).resolve().parent.parent
# A real run that trains in seconds, on the CPU: what these tests check is the CPU's behaviour (bit-for-bit
# resume, gloo ranks, CPU precision), also on a machine with a GPU; CUDA's own is tested where marked.
SMALL = ["--dataset", "digits", "--hidden-dim", "32", "--latent-dim", "4", "--device", "cpu"]


# -- waiting ------------------------------------------------------------------------------------
def _drive(driving: Any) -> None:
    """Tick each fake trainer once (one, or several, or none): the test is their clock."""
    fakes = driving if isinstance(driving, (list, tuple)) else [] if driving is None else [driving]
    for fake in fakes:
        fake.tick()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60.0, proc: subprocess.Popen | None = None, driving: Any = None) -> None:
    """Poll until `condition()` holds; fail saying what was awaited (and if a process died first).
    `driving`: fake trainers ticked before each look."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _drive(driving)
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            if condition():
                return
            raise AssertionError(f"the process exited with {proc.returncode} while waiting for {what}")
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


async def pilot_wait(pilot: Any, condition: Callable[[], Any], what: str, timeout: float = 30.0, driving: Any = None) -> None:
    """wait_for inside a Textual Pilot test: the app keeps running while we wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _drive(driving)
        if condition():
            return
        await pilot.pause(0.03)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture(autouse=True, scope="session")
def own_cache_folder(tmp_path_factory):
    """Decoded pictures go to a cache of this test session's own, never the user's (subprocesses too)."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture(autouse=True)
def no_process_left_behind(tmp_path):
    """After each test, end any process that still works in its folders, and fail the test that left it:
    a trainer, a monitor or a script left running would load the rest of the suite, and hide a leak."""
    yield
    deadline = time.monotonic() + LEFT_BEHIND_GRACE_S  # a process that is ending on its own may finish
    while (left := processes_in(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid, _ in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if left:  # ended now, and said: the test that started them should have ended them
        pytest.fail(f"left running after the test: {'; '.join(command[:120] for _, command in left)}")


LEFT_BEHIND_GRACE_S = 5.0


@pytest.fixture(autouse=True)
def this_process_as_found():
    """Fail the test that leaves this process changed: a vae-tui thread still running (a watcher that
    was never closed), a scheduling policy other than the one it had, or a signal handled otherwise
    (every process the rest of the suite starts would inherit an idle policy or an ignored signal)."""
    before = {t.ident for t in threading.enumerate()}
    scheduled = (os.sched_getscheduler(0), os.sched_getparam(0))
    handlers = {sig: signal.getsignal(sig) for sig in HANDLED}
    ignored = ignored_signals()
    yield
    changed = [sig.name for sig in HANDLED if signal.getsignal(sig) is not handlers[sig]]
    changed += [f"{sig.name} (ignored)" for sig in ignored_signals() ^ ignored]
    for sig in HANDLED:
        signal.signal(sig, handlers[sig])
    deadline = time.monotonic() + LEFT_BEHIND_GRACE_S  # a thread that is ending on its own may finish
    while (left := vae_threads_since(before)) and time.monotonic() < deadline:
        time.sleep(0.05)
    now = (os.sched_getscheduler(0), os.sched_getparam(0))
    if now != scheduled:
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):
                os.sched_setscheduler(int(tid), *scheduled)
    assert not left, f"left running after the test: threads {', '.join(left)}"
    assert now == scheduled, f"the test left this process scheduled with policy {now[0]} (it had {scheduled[0]})"
    assert not changed, f"the test left this process handling {', '.join(changed)} otherwise"


HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def ignored_signals() -> set[signal.Signals]:
    """The signals this process ignores, as the kernel has it (C code can ignore one behind Python's back)."""
    mask = int(Path("/proc/self/status").read_text().split("SigIgn:")[1].split()[0], 16)
    return {signal.Signals(n) for n in range(1, 32) if mask >> (n - 1) & 1 and n in signal.Signals._value2member_map_}


def vae_threads_since(before: set[int | None]) -> list[str]:
    return [t.name for t in threading.enumerate() if t.ident not in before and t.name.startswith("vae-") and t.is_alive()]


def processes_in(tmp_path: Path) -> list[tuple[int, str]]:
    """Processes (other than this one) whose command line names the test's folder: vae-tui's, or a
    script of the test's own that it ran."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(tmp_path).encode() in cmdline:
            found.append((int(entry), cmdline.decode(errors="replace")))
    return found


# -- runs and their records -----------------------------------------------------------------------
def batch_steps(run: Path | RunDir) -> list[int]:
    """Every step the run's records account for (each step of an interval record included)."""
    path = run.metrics_path if isinstance(run, RunDir) else run / "metrics.jsonl"
    return [int(s) for s in read_metrics(path).covered_steps()]


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


@pytest.fixture
def vae_tui(monkeypatch, capsys):
    """Run the `vae-tui` command in this process: (exit status, stdout, stderr)."""
    from vae_tui.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["vae-tui", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err

    return run


def run_cli_once(*args: str) -> None:
    """The command in this process, for session fixtures (which cannot use function-scoped fixtures)."""
    from vae_tui.cli import main

    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", ["vae-tui", *args])
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        mp.undo()
    assert exit_info.value.code == 0, f"vae-tui {' '.join(args)} exited with {exit_info.value.code}"


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A real two-epoch digits run made through the CLI's own code path, once per pytest run.

    Read-only for tests: copy it (copy_run) before changing anything in it.
    """
    run = tmp_path_factory.mktemp("reference") / "done"
    run_cli_once("train", *SMALL, "--epochs", "2", "--kl-warmup", "1", "--iw-samples", "20", "--run-dir", str(run), "--headless")
    return run


@pytest.fixture(scope="session")
def digits():
    from vae_tui.data import load_digits

    return load_digits()


@pytest.fixture
def small_digits(digits):
    """400 training images: a few batches an epoch keeps trainer tests quick."""
    import dataclasses

    return dataclasses.replace(digits, train_x=digits.train_x[:400], train_y=digits.train_y[:400], source="test subset of digits")


# -- data files -----------------------------------------------------------------------------------
def picture_folder(root, per_class=12, size=(10, 10), colour=True, classes=("cats", "dogs")):
    """Class folders of small PNGs, a damaged PNG and a text file among them."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size[::-1], 3) if colour else size[::-1], dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i:03d}.png")
    (root / classes[0] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not the rest of a png")
    (root / classes[0] / "notes.txt").write_text("not a picture")
    return root


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write a uint8 array in the IDX format MNIST uses."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


IDX_FILES = {  # torchvision's names for MNIST's four files
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def make_idx_dataset(data_dir: Path, folder: str = "MNIST", n_train: int = 40, n_test: int = 12, size: int = 6, gz: bool = False) -> Path:
    """A tiny MNIST-shaped dataset in torchvision's layout: data_dir/<folder>/raw/*-ubyte[.gz]."""
    raw = data_dir / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, size, size)),
        "train_y": rng.integers(0, 10, n_train),
        "test_x": rng.integers(0, 256, (n_test, size, size)),
        "test_y": rng.integers(0, 10, n_test),
    }
    for key, stem in IDX_FILES.items():
        write_idx(raw / stem, arrays[key], gz=gz)
    return raw


# -- processes in a terminal ----------------------------------------------------------------------
def spawn_in_pty(args: list[str], env: dict[str, str] | None = None, size: tuple[int, int] = (100, 30), shell: bool = False) -> tuple[int, int]:
    """`python -m vae_tui ARGS` (or, with `shell`, `bash ARGS`) in a pseudo-terminal, as a person's
    terminal runs it; (pid, pty fd)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.environ.update({"TERM": "xterm-256color", **(env or {})})
        if shell:
            os.execvp("bash", ["bash", *args])
        os.execvp(sys.executable, [sys.executable, "-m", "vae_tui", *args])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
    return pid, fd


def drain(fd: int, seconds: float, until: bytes | None = None, seen: bytes = b"", driving: Any = None) -> bytes:
    """Read what the app writes (a terminal nobody reads would block it), for `seconds` or until `until`
    shows; `driving`: fake trainers ticked whenever the app is quiet (never faster than it draws)."""
    out, end = b"", time.monotonic() + seconds
    while time.monotonic() < end and not (until is not None and until in seen + out):
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            _drive(driving)
        else:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            out += data
    return out


def exit_status(pid: int, fd: int, timeout: float = 30.0) -> int:
    """Keep reading the terminal until the process exits; its exit status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        drain(fd, 0.1)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"the process did not exit within {timeout:g} s")


# -- a fake run: the monitor's tests need no torch ---------------------------------------------------
class FakeProcess:
    """Stands in for the trainer's Popen when a monitor owns a fake run: poll, send_signal, wait.

    The fake trainer runs only when driven, so waiting for it drives it to its end, as a real
    process goes on running while it is waited for."""

    def __init__(self, fake: "FakeRun") -> None:
        self.fake, self.pid, self.returncode = fake, os.getpid(), None

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.fake.controls.stop(save=True)  # as the real worker's handler does: save a checkpoint, then end

    def wait(self, timeout: float | None = None) -> int:
        wait_for(lambda: self.returncode is not None, "the fake trainer to end", timeout or 30, driving=self.fake)
        return self.returncode  # type: ignore[return-value]


class FakeRun:
    """A run directory written through the format module by a trainer that the test drives by hand.

    It trains nothing: each tick takes the control folder's commands and obeys them with the
    trainer's own rules (training.controls), takes a few steps with a falling loss unless paused,
    ends epochs with pictures and the latent report, and publishes its status. Nothing happens
    between ticks: a test calls tick() or advance(), or waits `driving` the fake, which ticks it
    before each look. Everything a monitor reads, without torch and without a thread.
    """

    STEPS_PER_TICK = 6  # a trainer's period of publishing: a few steps at a time

    def __init__(self, path: Path, epochs: int = 500, batches_per_epoch: int = 12, channels: int = 1) -> None:
        self.run = open_run_dir(path)
        self.epochs, self.batches_per_epoch, self.channels = epochs, batches_per_epoch, channels
        write_config(
            self.run,
            RunInfo(
                config={"dataset": "digits", "epochs": epochs, "hidden_dim": 32, "latent_dim": 4},
                dataset={"name": "digits", "shape": [1, 8, 8]},
                view="monitor",
            ),
        )
        self.status = Status(
            state=RunState.TRAINING,
            dataset="digits",
            device="fake trainer",  # not "cpu": a watcher of a CPU run would put this process at idle priority
            data_placement="stream",
            model="64-32-4",
            parameters=4_996,
            epoch=1,
            epochs=epochs,
            batches_per_epoch=batches_per_epoch,
            beta=1.0,
            lr=1e-3,
            run_dir=str(self.run.path),
            pid=os.getpid(),
            host=socket.gethostname(),
        )
        self.metrics = MetricsWriter(self.run.metrics_path)
        self.rng = np.random.default_rng(0)
        self.controls = Controls()
        self.process = FakeProcess(self)
        self._lock = threading.Lock()  # an owning app's quit may wait for the fake from a worker thread
        control.open_channel(self.run)
        self.publish()

    # driving it
    def tick(self, steps: int = STEPS_PER_TICK) -> None:
        """One period of a trainer: commands taken and obeyed, `steps` steps unless paused, the status published."""
        with self._lock:
            if self.ended:
                return
            for command in control.take(self.run)[0]:
                self.controls.follow(command)
            take_requests(self.controls, self)
            if self.controls.stopping:
                self.status.last_checkpoint = str(self.run.last_checkpoint)
                self.end(RunState.STOPPED, f"stopped at step {self.status.step}")
                return
            if held(self.controls) != (self.status.state == RunState.PAUSED):
                self.pause_begins() if held(self.controls) else self.pause_ends()
            for _ in range(steps if self.status.state == RunState.TRAINING else 0):
                if not self.status.final:
                    self.step()
            if not self.status.final:
                self.publish()

    def advance(self, steps: int) -> "FakeRun":
        """`steps` more steps (fewer if it pauses or ends first), taken a tick at a time."""
        target = self.status.step + steps
        while self.status.step < target and not self.ended:
            before = self.status.step
            self.tick(min(self.STEPS_PER_TICK, target - before))
            if self.status.step == before:  # paused
                break
        return self

    def finish(self) -> "FakeRun":
        """Every epoch left, to the run's end."""
        return self.advance(self.epochs * self.batches_per_epoch)

    @property
    def ended(self) -> bool:
        return self.process.returncode is not None

    def clock(self) -> float:
        """The wall clock as the fake's watchers read it: time moves only when the test drives the fake,
        so its heartbeat is never stale, however slowly a loaded machine runs the test."""
        return self.status.updated

    def watch(self, owner: bool = False) -> RunWatch:
        """A watcher of this run with the fake's clock: as `vae-tui train` has it (the `owner`, stopping
        the trainer on quit) or as `vae-tui watch` does."""
        return RunWatch(self.run.path, self.process if owner else None, clock=self.clock)  # type: ignore[arg-type]

    # what a trainer does, one piece at a time (tests may call these directly)
    def step(self) -> None:
        s = self.status
        s.step += 1
        s.batch_in_epoch += 1
        recon, kl = 40.0 * 0.999**s.step + self.rng.normal(0, 0.3), 2.0 + self.rng.normal(0, 0.05)
        self.metrics.write(
            batch_lines(
                s.epoch,
                np.array([s.step]),
                np.array([recon]),
                np.array([kl]),
                np.array([recon + kl]),
                np.array([time.time()]),
                np.array([s.lr]),
                np.array([s.beta]),
            )
        )
        if s.batch_in_epoch == self.batches_per_epoch:
            self.end_epoch()

    def end_epoch(self) -> None:
        s = self.status
        loss = 42.0 * 0.99**s.epoch
        self.metrics.write(
            epoch_line(
                {
                    "epoch": s.epoch,
                    "step": s.step,
                    "train_loss": loss,
                    "test_loss": loss + 1,
                    "test_recon": loss - 1,
                    "test_kl": 2.0,
                    "samples_per_s": 40_000.0,
                    "time": time.time(),
                }
            )
        )
        s.best_test_loss = min(s.best_test_loss, loss + 1)
        pictures = (self.rng.random((16, self.channels, 8, 8), dtype=np.float32) for _ in range(3))
        write_snapshot(self.run, Snapshot(s.step, s.epoch, *pictures))
        write_analysis(self.run, self.analysis())
        if s.epoch >= self.epochs:
            self.end(RunState.FINISHED, f"finished {self.epochs} epochs ({s.step} steps)")
        else:
            s.epoch, s.batch_in_epoch = s.epoch + 1, 0

    def analysis(self) -> dict[str, np.ndarray]:
        n, s = 100, self.status
        return {
            "epoch": np.int64(s.epoch),
            "step": np.int64(s.step),
            "labels": np.arange(n) % 10,
            "latent_2d": self.rng.normal(size=(n, 2)).astype(np.float32),
            "pixels_2d": self.rng.normal(size=(n, 2)).astype(np.float32),
            "kl_per_dim": np.array([1.5, 0.8, 0.3, 0.001], dtype=np.float32),
            "traversal_dims": np.array([0, 1, 2]),
            "traversals": self.rng.random((3, 5, 1, 8, 8), dtype=np.float32),
            "vae_nll": np.float64(18.7),
            "vae_mse": np.float64(0.02),
            "pca_nll": np.float64(16.2),
            "pca_mse": np.float64(0.01),
        }

    def event(self, kind: str, message: str) -> None:
        append_events(self.run, [Event(kind, message)])

    def publish(self) -> None:
        self.status.updated = time.time()
        write_status(self.run, self.status)

    # how it obeys (training.controls.Obeying), as the trainer does
    def take_values(self, values: dict[str, float]) -> None:
        if values:
            self.status.lr, self.status.beta = values.get("lr", self.status.lr), values.get("beta", self.status.beta)
            self.status.changes = [*self.status.changes, {"step": self.status.step, **values}]

    def save_on_request(self) -> None:
        self.status.last_checkpoint = str(self.run.last_checkpoint)
        self.event("checkpoint", f"checkpoint on request: saved {self.run.last_checkpoint}")

    def pause_begins(self) -> None:
        self.status.state = RunState.PAUSED

    def pause_ends(self) -> None:
        self.status.state = RunState.TRAINING

    def end(self, state: RunState, message: str = "", evaluation: dict[str, Any] | None = None) -> None:
        self.status.state, self.status.message = state, message
        if evaluation:
            self.status.evaluation = evaluation
        if state == RunState.ERROR:
            self.event("error", message)
        self.publish()
        control.close_channel(self.run)
        self.process.returncode = 0 if state != RunState.ERROR else 1

    def kill(self, dead_pid: int) -> None:
        """As after SIGKILL: the heartbeat stops and its last status names a process that is gone."""
        self.process.returncode = -9
        self.status.pid = dead_pid
        self.publish()


@pytest.fixture
def fake_run(tmp_path):
    """Make a FakeRun in the test's folder (by name, for several)."""

    def make(name: str = "fake", **kwargs: Any) -> FakeRun:
        return FakeRun(tmp_path / name, **kwargs)

    return make


def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
