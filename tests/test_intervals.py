"""Runs whose files grow with time, not with steps: above 10 records a second, intervals of steps."""

import numpy as np

from conftest import SMALL, batch_steps
from vae_tui.pacing import Credit
from vae_tui.runfile.files import read_status
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.metrics import batch_lines, interval_lines, parse, read_metrics, truncate_metrics
from vae_tui.runfile.schema import RunState
from vae_tui.telemetry import Telemetry
from vae_tui.training.losses import LossChunk
from vae_tui.training.reporting import EPOCHS_BURST, EPOCHS_PER_S, RECORDS_BURST, RECORDS_PER_S, EpochPace, RecordBudget


def chunk(first, n, seconds):
    steps = np.arange(first, first + n)
    recon = 40.0 - steps * 0.01
    return LossChunk(steps, np.full(n, 128), np.linspace(0, seconds, n), recon, np.full(n, 2.0), recon + 2.0, seconds, np.full(n, 1e-3), np.full(n, 1.0))


def test_slow_steps_are_recorded_one_by_one_fast_ones_as_intervals_that_account_for_each_step():
    budget = RecordBudget()
    last, terms, spans = budget.points(chunk(1, 10, 1.0))
    assert spans is None and list(last) == list(range(10))  # ten steps a second: each its own record
    fast = chunk(11, 1000, 0.05)  # 20,000 steps a second
    last, terms, spans = budget.points(fast)
    assert spans is not None and len(last) <= RECORDS_BURST
    text = interval_lines(1, fast.steps[last], terms, fast.times[last], fast.lr[last], fast.beta[last], spans)
    metrics = parse(batch_lines(1, np.arange(1, 11), *([np.ones(10)] * 3), np.zeros(10)).encode() + text.encode())
    assert list(metrics.covered_steps()) == list(range(1, 1011)) and metrics.skipped == 0
    first, recon_min, recon_max = metrics.column("first"), metrics.column("recon_min"), metrics.column("recon_max")
    recon = metrics.column("recon")
    assert first[10] == 11 and (recon_min <= recon).all() and (recon <= recon_max).all()
    assert np.isclose(recon[10], fast.recon[: int(last[0]) + 1].mean())  # the mean of the interval's steps
    for _ in range(100):  # in steady state, one record per flush of the trainer's (every 100 ms)
        last, _, _ = budget.points(chunk(2000, 1000, 0.1))
    assert len(last) == 1
    last, _, _ = budget.points(chunk(3000, 20_000, 1.0))  # a second's worth at once: RECORDS_PER_S records
    assert len(last) == RECORDS_PER_S


def test_a_file_with_intervals_is_cut_back_at_a_checkpoint_whole(tmp_path):
    path = tmp_path / "metrics.jsonl"
    steps = np.arange(1, 401)
    terms = np.column_stack([np.full(400, 40.0), np.full(400, 2.0), np.full(400, 42.0)])
    from vae_tui.runfile.metrics import gather

    last, means, spans = gather(steps, terms, 4)  # 1-100, 101-200, ...
    path.write_text(interval_lines(1, steps[last], means, np.zeros(4), np.zeros(4), np.ones(4), spans))
    truncate_metrics(path, 200, 0)
    metrics = read_metrics(path)
    assert list(metrics.covered_steps()) == list(range(1, 201)) and list(metrics.column("first")) == [1, 101]


def test_the_charts_place_an_interval_at_its_steps():
    telemetry = Telemetry()
    telemetry.add_batches(np.array([1, 2, 3]), *([np.ones(3)] * 3))
    telemetry.add_batches(np.array([103, 203]), *([np.ones(2)] * 3))  # two intervals of a hundred steps
    assert list(telemetry.steps_at(np.array([0.0, 2.0, 3.0, 4.0]))) == [1, 3, 103, 203]
    assert telemetry.charted_status().step == 203 and list(telemetry.last_steps(2)) == [103, 203]


def test_a_fast_run_writes_intervals_and_resumes_and_exports_them(tmp_path, vae_tui):
    run = tmp_path / "run"
    code, out, err = vae_tui("train", *SMALL, "--batch-size", "16", "--epochs", "40", "--iw-samples", "0", "--run-dir", run)
    assert code == 0, err
    metrics = read_metrics(RunDir(run).metrics_path)
    per_epoch = read_status(RunDir(run))[0].batches_per_epoch
    assert metrics.spans is not None and len(metrics.batches) < 40 * per_epoch  # intervals: fewer records than steps
    assert batch_steps(run) == list(range(1, 40 * per_epoch + 1))  # and every step once
    code, out, err = vae_tui("train", "--resume", run, "--epochs", "45")
    assert code == 0, err
    assert batch_steps(run) == list(range(1, 45 * per_epoch + 1))
    code, out, err = vae_tui("export", run, "--output", tmp_path / "csv")
    assert code == 0, err
    header = (tmp_path / "csv" / "batches.csv").read_text().splitlines()[0]
    assert header == "epoch,step,recon,kl,loss,time,lr,beta,first,recon_min,recon_max,kl_min,kl_max,loss_min,loss_max"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_short_epochs_are_evaluated_and_recorded_a_few_times_a_second_and_the_last_always():
    clock = Clock()
    pace = EpochPace(clock)
    due = []
    for epoch in range(1, 1001):  # a hundred epochs a second for ten seconds
        clock.now += 0.01
        due.append(pace.due(last=epoch == 1000))
    assert all(due[:EPOCHS_BURST]) and due[-1]
    assert EPOCHS_BURST + 9 * EPOCHS_PER_S <= sum(due) <= EPOCHS_BURST + 10 * EPOCHS_PER_S + 1
    slow = EpochPace(clock)
    for _ in range(200):  # epochs of a quarter of a second or more: each one
        clock.now += 1 / EPOCHS_PER_S
        assert slow.due()


def test_a_run_of_short_epochs_records_some_and_accounts_for_every_step(tmp_path, small_digits):
    from helpers import make_trainer

    trainer, run = make_trainer(tmp_path, small_digits, epochs=8)
    trainer.epoch_pace.credit = Credit(0.0, 1.0)  # one epoch's record, then only the last
    result = trainer.run()
    assert result.state == RunState.FINISHED and result.epoch == 8
    metrics = read_metrics(run.metrics_path)
    assert [r["epoch"] for r in metrics.epochs] == [1, 8] and batch_steps(run.path) == list(range(1, 8 * 7 + 1))
    assert [r["epoch"] for r in trainer.telemetry.epochs()] == [1, 8]
    assert result.best_checkpoint.exists()


def test_the_epoch_shown_counts_epochs_that_have_no_record():
    telemetry = Telemetry()
    telemetry.update_status(batches_per_epoch=10, epochs=30)
    telemetry.add_batches(np.arange(1, 76), *([np.ones(75)] * 3))
    telemetry.add_epoch({"epoch": 2, "step": 20, "train_loss": 1.0, "test_loss": 1.0})
    shown = telemetry.charted_status()  # step 75: epochs 3 to 7 ended unrecorded, 5 steps into the 8th
    assert (shown.epoch, shown.batch_in_epoch, shown.step) == (8, 5, 75)
