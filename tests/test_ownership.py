"""Never touch what is not ours: links planted in a run directory are refused or left alone, and
nothing outside the run directory is deleted, truncated, chmodded or overwritten."""

import os
import stat

import pytest

from conftest import SMALL, copy_run
from vae_tui.runfile import control
from vae_tui.runfile.io import append_text
from vae_tui.runfile.layout import RunDir, open_run_dir
from vae_tui.runfile.metrics import MetricsWriter


@pytest.fixture
def victim(tmp_path):
    """A folder of someone else's files, with a mode of its own, that a link may point at."""
    folder = tmp_path / "someone-elses"
    folder.mkdir(mode=0o755)
    for name in ("notes.txt", "1-2-stop.cmd", ".x.tmp"):
        (folder / name).write_text(f"keep {name}")
    return folder


def untouched(folder):
    return {p.name: p.read_text() for p in folder.iterdir()}, stat.S_IMODE(folder.stat().st_mode)


@pytest.mark.parametrize("name", ["control", "checkpoints", "metrics.jsonl", "events.jsonl", "train.log", "status.json", "trainer.lock", "checkpoints/last.pt"])
def test_a_link_in_place_of_our_own_file_refuses_the_run_touching_nothing(tmp_path, finished_run, victim, name, vae_tui):
    run = copy_run(finished_run, tmp_path / "run")
    target = run / name
    if target.is_dir():
        import shutil

        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)
    target.symlink_to(victim if name in ("control", "checkpoints") else victim / "notes.txt")
    before, files = untouched(victim), {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and not p.is_symlink()}
    code, out, err = vae_tui("train", "--resume", run, "--epochs", "3")
    assert code == 1 and err.count("\n") == 1 and "is a symbolic link" in err and "Traceback" not in err
    assert untouched(victim) == before
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and not p.is_symlink()} == files


def test_a_new_run_in_a_folder_with_a_planted_link_is_refused(tmp_path, victim, vae_tui):
    folder = tmp_path / "new"
    folder.mkdir()
    (folder / "control").symlink_to(victim)
    before = untouched(victim)
    code, _, err = vae_tui("train", *SMALL, "--epochs", "1", "--run-dir", folder)
    assert code == 1 and "is a symbolic link" in err
    assert untouched(victim) == before and sorted(p.name for p in folder.iterdir()) == ["control"]


def test_the_control_channel_never_follows_a_link(tmp_path, victim):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.control_dir.symlink_to(victim)
    before = untouched(victim)
    with pytest.raises(control.ControlError, match="symbolic link"):
        control.open_channel(run)
    control.close_channel(run)  # a trainer ending: leaves a link (and what it points to) alone
    commands, refused = control.take(run)
    assert commands == [] and "symbolic link" in refused[0]
    assert untouched(victim) == before and run.control_dir.is_symlink()


def test_a_command_file_that_is_a_link_is_refused_as_a_link(tmp_path, victim):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    control.open_channel(run)
    (run.control_dir / "1-1-stop.cmd").symlink_to(victim / "1-2-stop.cmd")
    commands, refused = control.take(run)
    assert commands == [] and "is a symbolic link" in refused[0] and "owner" not in refused[0]
    assert (victim / "1-2-stop.cmd").read_text() == "keep 1-2-stop.cmd"


def test_appending_to_our_files_never_follows_a_link_planted_later(tmp_path, victim):
    for name in ("metrics.jsonl", "events.jsonl"):
        (tmp_path / name).symlink_to(victim / "notes.txt")
    with pytest.raises(OSError):
        MetricsWriter(tmp_path / "metrics.jsonl")
    with pytest.raises(OSError):
        append_text(tmp_path / "events.jsonl", "{}\n")
    assert (victim / "notes.txt").read_text() == "keep notes.txt"


def test_the_writability_probe_makes_a_fresh_name(tmp_path, victim):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".write-test").symlink_to(victim / "notes.txt")  # the name an older probe used
    open_run_dir(folder)
    assert (victim / "notes.txt").read_text() == "keep notes.txt" and os.path.islink(folder / ".write-test")


def test_one_trainer_per_run_and_the_second_says_who(tmp_path):
    from vae_tui.errors import VaeTuiError
    from vae_tui.runfile.lock import RunLock

    run = open_run_dir(tmp_path / "run")
    first = RunLock.acquire(run)
    with pytest.raises(VaeTuiError, match=f"already being trained by pid {os.getpid()} on "):
        RunLock.acquire(run)
    first.release()
    RunLock.acquire(run).release()  # free again once the holder is gone
