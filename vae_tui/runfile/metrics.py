"""metrics.jsonl and events.jsonl: append-only records, readable while written and after a crash.

Batch records: {"kind": "batch", "epoch", "step", "recon", "kl", "loss", "time", "lr", "beta"}
(lr and beta since format 3: the learning rate and the KL weight of that step; NaN when not known)
Interval records (format 4, when steps come faster than records should): {"kind": "steps", the
batch fields for the interval's last step with the means of its steps, "first" (its first step),
"recon_min", "recon_max", "kl_min", "kl_max", "loss_min", "loss_max"}
Epoch records: {"kind": "epoch", "epoch", "step", "train_loss", "test_loss", "test_recon",
                "test_kl", "samples_per_s", "time"}
Losses are per-image means in nats, `time` is Unix seconds, epochs count from 1.

`parse` is the one reader of metrics, used by the watcher, `runs`, `export` and truncation on
resume. A million batch lines must parse in about a second, so whole blocks of them go through
numpy's C text reader at once; anything that does not match the writer's layout exactly takes
the careful path, line by line through json, and what is not a valid record is counted, not fatal.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vae_tui.runfile.io import atomic_write, open_append
from vae_tui.runfile.schema import BATCH_FIELDS, EPOCH_FIELDS, SETTING_FIELDS, SPAN_FIELDS, Event

READ_CHUNK = 8 << 20  # bytes parsed at a time: bounded memory on a 1M-batch file

_BATCH_START = b'{"kind": "batch", "epoch": '
_STEPS_START = b'{"kind": "steps", "epoch": '
_EPOCH_START = b'{"kind": "epoch"'
# With JSON's punctuation turned into spaces, batch lines in the writer's layout are a table:
# "3 step 1 recon 1.5 kl 0.2 loss 1.7 time 1.0" (the prefix up to the epoch's value removed)
_PUNCTUATION_TO_SPACE = bytes.maketrans(b'{}":,', b"     ")
_TABLE_COLUMNS = tuple(range(0, 2 * len(BATCH_FIELDS), 2))
_OLD_TABLE_COLUMNS = _TABLE_COLUMNS[: -len(SETTING_FIELDS)]  # format 2's records, without lr and beta
_STEPS_COLUMNS = tuple(range(0, 2 * (len(BATCH_FIELDS) + len(SPAN_FIELDS)), 2))


def _num(value: float) -> str:
    """A float as JSON the way json.dumps writes it, NaN and infinities included."""
    if math.isfinite(value):
        return f"{value:.7g}"  # float32 precision: nothing is lost
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def batch_lines(
    epoch: int | np.ndarray,
    steps: np.ndarray,
    recon: np.ndarray,
    kl: np.ndarray,
    loss: np.ndarray,
    times: np.ndarray,
    lr: np.ndarray | None = None,
    beta: np.ndarray | None = None,
) -> str:
    """Batch records for a chunk of steps, formatted directly (json.dumps per line is slower)."""
    epochs = np.broadcast_to(np.asarray(epoch), np.shape(steps))
    lr = np.full(np.shape(steps), np.nan) if lr is None else lr
    beta = np.full(np.shape(steps), np.nan) if beta is None else beta
    return "".join(
        f'{{"kind": "batch", "epoch": {int(e)}, "step": {int(s)}, "recon": {_num(float(r))}, '
        f'"kl": {_num(float(k))}, "loss": {_num(float(o))}, "time": {t:.3f}, "lr": {_num(float(a))}, "beta": {_num(float(b))}}}\n'
        for e, s, r, k, o, t, a, b in zip(epochs, steps, recon, kl, loss, times, lr, beta)
    )


def interval_lines(
    epoch: int | np.ndarray, steps: np.ndarray, values: np.ndarray, times: np.ndarray, lr: np.ndarray, beta: np.ndarray, spans: np.ndarray
) -> str:
    """Interval records: `values` (n, 3) the means of recon, kl and loss, `spans` (n, 7) as SPAN_FIELDS."""
    epochs = np.broadcast_to(np.asarray(epoch), np.shape(steps))
    return "".join(
        f'{{"kind": "steps", "epoch": {int(e)}, "step": {int(s)}, "recon": {_num(float(v[0]))}, "kl": {_num(float(v[1]))}, '
        f'"loss": {_num(float(v[2]))}, "time": {t:.3f}, "lr": {_num(float(a))}, "beta": {_num(float(b))}, "first": {int(sp[0])}, '
        + ", ".join(f'"{name}": {_num(float(x))}' for name, x in zip(SPAN_FIELDS[1:], sp[1:]))
        + "}\n"
        for e, s, v, t, a, b, sp in zip(epochs, steps, values, times, lr, beta, spans)
    )


def gather(steps: np.ndarray, terms: np.ndarray, most: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Consecutive steps into at most `most` intervals: (the index of each interval's last step, the means of
    `terms` (n, k) over it, its spans (first step, then the min and max of each term))."""
    bounds = np.linspace(0, len(steps), min(most, len(steps)) + 1).round().astype(np.int64)
    last = bounds[1:] - 1
    means = np.add.reduceat(terms, bounds[:-1], axis=0) / np.diff(bounds)[:, None]
    lows, highs = np.minimum.reduceat(terms, bounds[:-1], axis=0), np.maximum.reduceat(terms, bounds[:-1], axis=0)
    spans = np.column_stack([steps[bounds[:-1]], *(col for pair in zip(lows.T, highs.T) for col in pair)])
    return last, means, spans


def epoch_line(record: dict[str, Any]) -> str:
    return json.dumps({"kind": "epoch", **{k: record[k] for k in EPOCH_FIELDS if k in record}}) + "\n"


@dataclass
class Metrics:
    """Parsed records: batches as a table (columns BATCH_FIELDS), epochs as dicts."""

    batches: np.ndarray = field(default_factory=lambda: np.empty((0, len(BATCH_FIELDS))))
    epochs: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0  # lines that were not a valid record
    spans: np.ndarray | None = None  # (n, 7) as SPAN_FIELDS when any row is an interval of steps, else None

    def column(self, name: str) -> np.ndarray:
        if name in SPAN_FIELDS:
            return self.span_table()[:, SPAN_FIELDS.index(name)]
        return self.batches[:, BATCH_FIELDS.index(name)]

    def span_table(self) -> np.ndarray:
        """Each row's first step and the min and max of each term: a step's own values for a batch record."""
        if self.spans is not None:
            return self.spans
        b = self.batches
        return np.column_stack([b[:, 1], b[:, 2], b[:, 2], b[:, 3], b[:, 3], b[:, 4], b[:, 4]]) if len(b) else np.empty((0, 7))

    def covered_steps(self) -> np.ndarray:
        """Every step the records account for, in order: a batch record's own, each step of an interval."""
        first, last = self.span_table()[:, 0].astype(np.int64), self.batches[:, 1].astype(np.int64)
        if not len(last):
            return last
        counts = last - first + 1
        return np.repeat(last - counts + 1, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))

    def extend(self, other: "Metrics") -> None:
        if len(other.batches):
            if self.spans is not None or other.spans is not None:
                self.spans = np.concatenate([self.span_table(), other.span_table()])
            self.batches = np.concatenate([self.batches, other.batches]) if len(self.batches) else other.batches
        self.epochs.extend(other.epochs)
        self.skipped += other.skipped


def parse(data: bytes, extremes: bool = True) -> Metrics:
    """Whole lines of metrics.jsonl into records; invalid lines and unknown kinds are counted and skipped.
    Without `extremes` an interval's min and max are left unread (NaN): a watcher's charts need only
    its means and steps, and ten hours of a fast run read a third faster."""
    block, epoch_lines = _split_epochs(data)
    out = Metrics()
    for line in epoch_lines:
        epoch = _epoch_record(_json_object(line))
        if epoch is None:
            out.skipped += 1
        else:
            out.epochs.append(epoch)
    if _STEPS_START in block:
        return _with_intervals(block, out, extremes)
    table = _fast_table(block)
    if table is not None:
        out.batches = table
        return out
    rows = []
    for line in block.splitlines():
        record = _json_object(line)
        row = _batch_row(record) if record is not None and record.get("kind") == "batch" else None
        if row is not None:
            rows.append(row)
        elif record is None or record.get("kind") in ("batch", "epoch"):
            out.skipped += 1  # garbage, or a record with fields missing; other kinds are not ours to judge
    if rows:
        out.batches = np.array(rows, dtype=np.float64)
    return out


def _with_intervals(block: bytes, out: Metrics, extremes: bool) -> Metrics:
    """A block with interval records: batch and interval lines through their own fast tables, in step order."""
    if _BATCH_START not in block and block.count(_STEPS_START) == block.count(b"\n"):
        steps, rest = block, Metrics()  # a fast run's file: nothing but intervals (and epochs, taken out already)
    else:
        lines = block.split(b"\n")
        steps = b"".join(line + b"\n" for line in lines if line.startswith(_STEPS_START))
        rest = parse(b"".join(line + b"\n" for line in lines if line and not line.startswith(_STEPS_START)))
    out.skipped += rest.skipped
    try:
        words = steps.replace(_STEPS_START, b" ").translate(_PUNCTUATION_TO_SPACE)
        columns = _STEPS_COLUMNS if extremes else _STEPS_COLUMNS[: len(BATCH_FIELDS) + 1]
        table = np.loadtxt(io.BytesIO(words), usecols=columns, ndmin=2)
        if not extremes:
            table = np.pad(table, ((0, 0), (0, len(SPAN_FIELDS) - 1)), constant_values=np.nan)
    except ValueError:
        table = np.array([row for line in steps.splitlines() if (row := _interval_row(_json_object(line))) is not None])
        out.skipped += steps.count(b"\n") - len(table)
    n = len(BATCH_FIELDS)
    batches = np.concatenate([rest.batches, table[:, :n]]) if len(table) else rest.batches
    spans = np.concatenate([rest.span_table(), table[:, n:]]) if len(table) else rest.span_table()
    order = np.argsort(batches[:, 1], kind="stable")
    out.batches, out.spans = batches[order], spans[order]
    return out


def _interval_row(record: dict[str, Any] | None) -> list[float] | None:
    if record is None or record.get("kind") != "steps":
        return None
    row = _batch_row(record)
    if row is None or not all(is_number(record.get(name)) for name in SPAN_FIELDS):
        return None
    return row + [float(record[name]) for name in SPAN_FIELDS]


def _split_epochs(data: bytes) -> tuple[bytes, list[bytes]]:
    """The (rare: one an epoch) epoch lines apart, and everything else as one block."""
    text = b"\n" + data  # every line, the first included, now follows a newline
    epochs, pieces, start = [], [], 1
    while (at := text.find(b"\n" + _EPOCH_START, start - 1)) >= 0:
        end = text.find(b"\n", at + 1) + 1 or len(text)
        pieces.append(text[start : at + 1])
        epochs.append(text[at + 1 : end])
        start = end
    pieces.append(text[start:])
    return b"".join(pieces), epochs


def _fast_table(block: bytes) -> np.ndarray | None:
    """Rows of BATCH_FIELDS when every line is a batch record in the writer's layout, else None."""
    n = block.count(b"\n")
    if n == 0:
        return np.empty((0, len(BATCH_FIELDS)))
    if block.count(_BATCH_START) != n:
        return None
    words = block.replace(_BATCH_START, b" ").translate(_PUNCTUATION_TO_SPACE)
    for columns in (_TABLE_COLUMNS, _OLD_TABLE_COLUMNS):  # this format's records, or all of format 2's
        try:
            values = np.loadtxt(io.BytesIO(words), usecols=columns, ndmin=2)
        except ValueError:
            continue
        if len(values) == n and len(columns) == len(BATCH_FIELDS):
            return values
        if len(values) == n and not _has_settings(block):
            return np.pad(values, ((0, 0), (0, len(SETTING_FIELDS))), constant_values=np.nan)
    return None


def _has_settings(block: bytes) -> bool:
    return b'"lr": ' in block


def _json_object(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def is_number(value: Any) -> bool:
    """A JSON number (a bool is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _batch_row(record: dict[str, Any]) -> list[float] | None:
    if not all(is_number(record.get(name)) for name in BATCH_FIELDS if name not in SETTING_FIELDS):
        return None
    return [float(record[name]) if is_number(record.get(name)) else math.nan for name in BATCH_FIELDS]


def _epoch_record(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """An epoch record with every field a number (and the kind dropped), or None."""
    if record is None or not all(is_number(record.get(name)) for name in EPOCH_FIELDS):
        return None
    return {name: record[name] for name in EPOCH_FIELDS}


def read_metrics(path: str | os.PathLike[str]) -> Metrics:
    """Every record of a metrics file (empty when there is none); a torn last line is left out."""
    out = Metrics()
    try:
        with open(path, "rb") as f:
            rest = b""
            while chunk := f.read(READ_CHUNK):
                data = rest + chunk
                end = data.rfind(b"\n") + 1
                out.extend(parse(data[:end]))
                rest = data[end:]
    except FileNotFoundError:
        pass
    return out


def truncate_metrics(path: str | os.PathLike[str], step: int, epoch: int) -> None:
    """Drop records written after a checkpoint, so a resumed run repeats no step and skips none.

    Batch records beyond `step` and epoch records beyond `epoch` (completed epochs) go; damaged
    lines go too. The file is replaced atomically, so a crash here loses nothing.
    """
    path = Path(path)
    if not path.exists():
        return
    metrics = read_metrics(path)
    kept = metrics.column("step") <= step
    keep, spans = metrics.batches[kept], metrics.span_table()[kept]
    epochs = [r for r in metrics.epochs if r["epoch"] <= epoch]
    if len(keep) == len(metrics.batches) and len(epochs) == len(metrics.epochs) and not metrics.skipped and _ends_whole(path):
        return  # nothing after the checkpoint: leave the file (and its watchers) alone
    atomic_write(path, _lines_in_order(keep, spans, epochs).encode(), durable=True)


def _ends_whole(path: Path) -> bool:
    """Whether the file's last line is complete (an empty file is)."""
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _lines_in_order(batches: np.ndarray, spans: np.ndarray, epochs: list[dict[str, Any]]) -> str:
    """Batch, interval and epoch lines as the trainer writes them: an epoch's record after its last batch."""
    steps = batches[:, 1]
    parts, start = [], 0
    for record in sorted(epochs, key=lambda r: r["epoch"]):
        end = int(np.searchsorted(steps, record["step"], side="right"))
        parts.append(_rows_text(batches[start:end], spans[start:end]))
        parts.append(epoch_line(record))
        start = max(start, end)
    parts.append(_rows_text(batches[start:], spans[start:]))
    return "".join(parts)


def _rows_text(rows: np.ndarray, spans: np.ndarray) -> str:
    """Each row as the record it was: a batch, or an interval (its first step before its last)."""
    if not len(rows):
        return ""
    interval = spans[:, 0] < rows[:, 1]
    bounds = [0, *(np.flatnonzero(np.diff(interval.astype(np.int8))) + 1), len(rows)]
    out = []
    for a, z in zip(bounds[:-1], bounds[1:]):  # runs of one kind at a time, each in one call
        e, s, r, k, loss, t, lr, beta = rows[a:z].T
        if interval[a]:
            out.append(interval_lines(e.astype(np.int64), s.astype(np.int64), rows[a:z, 2:5], t, lr, beta, spans[a:z]))
        else:
            out.append(batch_lines(e.astype(np.int64), s.astype(np.int64), r, k, loss, t, lr, beta))
    return "".join(out)


class MetricsWriter:
    """Appends records and flushes each chunk, so another process can follow the file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = open_append(self.path)

    def write(self, text: str) -> None:
        self._file.write(text)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def parse_events(data: bytes) -> tuple[list[Event], int]:
    """Whole lines of events.jsonl as events, and how many lines were not valid events."""
    events, skipped = [], 0
    for line in data.splitlines():
        record = _json_object(line)
        if record is None or not isinstance(record.get("kind"), str) or not isinstance(record.get("message"), str) or not is_number(record.get("time")):
            skipped += 1
            continue
        events.append(Event(record["kind"], record["message"], float(record["time"])))
    return events, skipped


def event_line(event: Event) -> str:
    return json.dumps(event.to_dict()) + "\n"
