"""The run directory's format: the atomic writer, and readers that report damage instead of raising."""

import json
import os

import numpy as np
import pytest

from vae_tui.runfile import io as runfile_io
from vae_tui.runfile.files import Snapshot, read_snapshot, read_status, write_snapshot, write_status
from vae_tui.runfile.io import atomic_write, remove_partial_writes
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.metrics import batch_lines, epoch_line, parse, parse_events, read_metrics, truncate_metrics
from vae_tui.runfile.schema import BATCH_FIELDS, FORMAT, Liveness, RunState, Status, shown_state
from vae_tui.watching.catalog import summarize
from vae_tui.watching.follow import RunFollower

EPOCH = {"epoch": 1, "step": 3, "train_loss": 3.0, "test_loss": 4.0, "test_recon": 3.5, "test_kl": 0.5, "samples_per_s": 10.0, "time": 1.0}


def batches(first, last, epoch=1):
    steps = np.arange(first, last + 1)
    v = steps.astype(np.float32)
    return batch_lines(epoch, steps, v, v / 10, v * 1.1, steps * 1.0)


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "status.json"
    atomic_write(path, b"old")

    def dies_half_way(f):
        f.write(b"half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, dies_half_way, durable=True)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["status.json"]
    atomic_write(path, lambda f: f.write(b"new"), durable=True)
    assert path.read_bytes() == b"new"
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~runfile_io._UMASK)  # as open() would make it


def test_a_planted_temporary_name_is_never_followed(tmp_path):
    """Temporary files are created exclusively, with fresh names: a link planted where one might go is left alone."""
    victim = tmp_path / "victim"
    victim.write_text("mine")
    for guess in ("status.json.tmp", ".status.json.tmp"):
        (tmp_path / guess).symlink_to(victim)
    atomic_write(tmp_path / "status.json", b"{}")
    assert victim.read_text() == "mine"
    assert remove_partial_writes(tmp_path) == [] and victim.exists()  # links are not ours to delete


@pytest.mark.parametrize(
    "content, problem", [(b"null", "holds NoneType"), (b"[]", "holds list"), (b"\x00\xff\x13binary", "not JSON"), (b'{"state": "training", "pi', "not JSON")]
)
def test_a_damaged_status_is_reported_not_raised(tmp_path, content, problem):
    run = RunDir(tmp_path)
    run.status_path.write_bytes(content)
    status, said = read_status(run)
    assert status is None and problem in said


def test_status_fields_of_the_wrong_type_are_defaulted_and_named(tmp_path):
    run = RunDir(tmp_path)
    run.status_path.write_text(json.dumps({"state": "paused", "pid": "abc", "step": 12, "epoch": True, "future_field": 1}))
    status, said = read_status(run)
    assert status.state == RunState.PAUSED and status.step == 12 and status.pid == 0 and status.epoch == 0
    assert "pid=" in said and "epoch=" in said and "future_field" not in said
    run.status_path.write_text(json.dumps({"state": "dancing"}))
    status, said = read_status(run)
    assert status.state == RunState.STARTING and "state=" in said


def test_status_round_trips_with_its_format_version(tmp_path):
    run = RunDir(tmp_path)
    write_status(run, Status(state=RunState.FINISHED, step=7, evaluation={"iw_nll": 1.0}))
    assert json.loads(run.status_path.read_text())["format"] == FORMAT
    status, said = read_status(run)
    assert said is None and status.state is RunState.FINISHED and status.final and status.evaluation == {"iw_nll": 1.0}


def test_metrics_parsing_skips_and_counts_what_is_not_a_record():
    good = batches(1, 3) + epoch_line(EPOCH)
    metrics = parse(good.encode())
    assert metrics.column("step").tolist() == [1, 2, 3] and metrics.epochs == [EPOCH] and metrics.skipped == 0
    damaged = (
        batches(1, 3)
        + "garbage\n"
        + "null\n"
        + '{"kind": "epoch", "epoch": 2}\n'
        + json.dumps({"kind": "batch", "time": 5, "loss": 4.4, "kl": 0.4, "recon": 4.0, "step": 4, "epoch": 1})
        + "\n"
        + '{"kind": "note"}\n'
    )
    metrics = parse(damaged.encode())
    assert metrics.column("step").tolist() == [1, 2, 3, 4]  # a batch record with its keys in another order still counts
    assert metrics.epochs == [] and metrics.skipped == 3  # garbage, null and the epoch record missing fields


def test_reading_a_file_leaves_out_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(batches(1, 5) + batches(6, 6)[:20])
    metrics = read_metrics(path)
    assert metrics.column("step").tolist() == [1, 2, 3, 4, 5] and metrics.skipped == 0
    assert read_metrics(tmp_path / "missing.jsonl").batches.shape == (0, len(BATCH_FIELDS))


def test_truncation_keeps_the_order_and_the_bytes_of_what_it_keeps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    kept = batches(1, 3) + epoch_line(EPOCH) + batches(4, 5, epoch=2)
    path.write_text(kept + batches(6, 9, epoch=2) + epoch_line({**EPOCH, "epoch": 2, "step": 9}) + "junk\n")
    truncate_metrics(path, step=5, epoch=1)
    assert path.read_text() == kept


def test_events_parse_and_skip_damage():
    events, skipped = parse_events(b'{"kind": "warning", "message": "disk", "time": 3.5}\nnot json\n{"kind": 1}\n')
    assert [(e.kind, e.message, e.time) for e in events] == [("warning", "disk", 3.5)] and skipped == 2


def test_snapshots_carry_channels_and_old_grey_ones_still_read(tmp_path):
    run = RunDir(tmp_path)
    colour = np.random.default_rng(0).random((2, 3, 4, 4), dtype=np.float32)
    write_snapshot(run, Snapshot(5, 1, colour, colour, colour))
    snapshot, said = read_snapshot(run)
    assert said is None and snapshot.samples.shape == (2, 3, 4, 4)
    np.savez(run.snapshot_path, step=1, epoch=1, **{k: np.zeros((2, 4, 4), np.uint8) for k in ("originals", "reconstructions", "samples")})
    snapshot, said = read_snapshot(run)
    assert snapshot.originals.shape == (2, 1, 4, 4)  # format 1: grey, no channel axis
    run.snapshot_path.write_bytes(b"PK\x03\x04 not a zip at all")
    assert read_snapshot(run)[0] is None and "damaged" in read_snapshot(run)[1]


def test_a_follower_survives_every_damaged_file_and_says_so_once(tmp_path):
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    run.config_path.write_text("{}")
    run.status_path.write_text("null")
    run.metrics_path.write_text(batches(1, 4) + "\x00\x01 garbage\n")
    run.events_path.write_text("[1, 2]\n")
    run.snapshot_path.write_bytes(b"\x00" * 10)
    run.analysis_path.write_text("not an npz")
    follower = RunFollower(run.path)
    follower.poll()
    follower.poll()
    warnings = [e.message for e in follower.notes if e.kind == "warning"]
    assert follower.telemetry.batches == 4
    assert sorted(w.split(" file")[0] for w in warnings) == ["analysis", "events", "metrics", "snapshot", "status"]


def test_runs_lists_a_damaged_run_as_damaged(tmp_path):
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    run.config_path.write_text(json.dumps({"config": {"dataset": "digits", "epochs": 3}}))
    for content in ("null", "[]", '{"state": "training", "pid": "abc", "dataset": "digits"}'):
        run.status_path.write_text(content)
        summary = summarize(run.path)
        assert summary.status == "damaged" and summary.problem, content


@pytest.mark.parametrize(
    "state, liveness, shown",
    [
        (RunState.TRAINING, Liveness.RUNNING, "training"),
        (RunState.PAUSED, Liveness.RUNNING, "paused"),
        (RunState.TRAINING, Liveness.GONE, "crashed"),
        (RunState.TRAINING, Liveness.NOT_ANSWERING, "not answering"),
        (RunState.FINISHED, Liveness.ENDED, "finished"),
        (RunState.ERROR, Liveness.ENDED, "error"),
        (RunState.STOPPED, Liveness.GONE, "stopped"),
        (RunState.STARTING, Liveness.STARTING, "starting"),
    ],
)
def test_one_word_for_a_run_everywhere(state, liveness, shown):
    assert shown_state(state, liveness) == shown


def test_config_json_is_one_record_read_back_whole_and_forgiving(tmp_path, finished_run):
    from vae_tui.runfile.files import read_run_info, write_config
    from vae_tui.runfile.schema import RunInfo

    run = RunDir(tmp_path)
    info = RunInfo(config={"epochs": 3}, dataset={"name": "digits"}, view="monitor", world_size=2, torchrun={"agent": "h:1:2"})
    write_config(run, info)
    assert read_run_info(run) == (info, None)
    written = json.loads(run.config_path.read_text())
    assert written["format"] == FORMAT and written["script"] == "" and written["resumed_from"] is None
    # an older run, or one a hand edited: what is missing or mistyped is empty, the rest is kept
    run.config_path.write_text(json.dumps({"config": {"epochs": 3}, "world_size": "2", "device": ["cpu"], "view": "here"}))
    back, problem = read_run_info(run)
    assert problem is None and back is not None
    assert (back.config, back.world_size, back.device, back.view, back.torchrun) == ({"epochs": 3}, 1, {}, "here", None)
    # a real run's config.json holds every field of the record
    real = json.loads(RunDir(finished_run).config_path.read_text())
    assert set(real) == {"format", *RunInfo().to_dict()}
