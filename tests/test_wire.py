"""The monitor's bytes to the terminal: counted as they leave, paced by --wire, and never a frozen screen.

The app runs here with a driver that is sent what a terminal would be (Textual's headless driver is
sent nothing) and on a clock of the test's: each tick the fake trainer steps, the watcher reads the
run, and the app does what its timers would. So 30 s of a thin link take a few seconds to test, and
every byte counted is one a terminal would have got.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from textual.drivers.headless_driver import HeadlessDriver

from conftest import FakeRun
from helpers import text_of
from vae_tui.errors import ConfigError
from vae_tui.tui.app import RESIZE_SETTLE_SECONDS, VaeApp
from vae_tui.tui.widgets import loss_number
from vae_tui.tui.wire import BUCKET_S, CHART_WAIT_S, RESERVE_S, Pace, WireBudget, counted, parse_wire

TICK = 0.25  # the app's chart timer: a tick of the test's clock
WINDOW_S = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ScreenlessDriver(HeadlessDriver):
    """Textual's headless driver, but written to: the app sends it every update a terminal would get (and
    counts it), where the headless one is sent nothing."""

    @property
    def is_headless(self) -> bool:
        return False


def on_clock(fake: FakeRun, wire_kb: float, clock: Clock, owner: bool = False) -> VaeApp:
    return VaeApp(fake.watch(owner=owner), wire_kb=wire_kb, clock=clock, driver=ScreenlessDriver)


@dataclass(repr=False)
class Watched:
    """What a watching noted (`Driven`), as plain data: it comes back from a process of its own."""

    sent: list[tuple[float, int]]  # (when, bytes sent so far), tick by tick
    repaints: list[tuple[float, int]]  # (when, bytes) of what a person's action repainted at once
    chart_changed: list[float]  # when the reconstruction chart showed something new
    behind: list[int]  # after each status tick: the run's step minus the status line's
    etas: list[tuple[float, float]]  # (when, seconds left) as the status line said it
    losses: list[tuple[str, str]]  # (the status line's losses, the run's latest records of them)
    chart: str = ""  # the reconstruction chart at the end
    overlays: list[str] = field(default_factory=list)  # the runs compared, by name
    when: float = 0.0  # the clock's time of the person's action

    def __repr__(self) -> str:
        return f"<watched for {self.elapsed:g} s: {self.total:,} bytes, repaints {[b for _, b in self.repaints]}>"

    @property
    def elapsed(self) -> float:
        return self.sent[-1][0]

    @property
    def total(self) -> int:
        return self.sent[-1][1]

    def longest_still(self, since: float) -> float:
        """The longest the reconstruction chart stood still after `since` (up to the end)."""
        edges = [since, *(t for t in self.chart_changed if t >= since), self.elapsed]
        return max(b - a for a, b in zip(edges, edges[1:]))

    def most_paced_in_a_window(self, seconds: float = WINDOW_S) -> int:
        """The most bytes sent in any span of `seconds` on the clock, apart from the repaints in it."""
        most, start = 0, 0
        for end in range(len(self.sent)):
            while self.sent[end][0] - self.sent[start][0] > seconds:
                start += 1
            repainted = sum(b for t, b in self.repaints if self.sent[start][0] <= t <= self.sent[end][0])
            most = max(most, self.sent[end][1] - self.sent[start][1] - repainted)
        return most

    def eta_jumps(self) -> float:
        """The most the ETA moved between two looks, beyond the time that passed between them."""
        return max((abs((a - b) - (t1 - t0)) for (t0, a), (t1, b) in zip(self.etas, self.etas[1:])), default=0.0)


class Driven:
    """The app on a fake run, on the test's clock. Each tick the fake takes its steps, the watcher reads
    them, and the app does what its timers do (charts every tick, the status line every other, pictures
    every fourth); then Textual writes what changed. Noted as it goes, in `watched`: the bytes sent, when
    the reconstruction chart showed something new, and what the status line said against the run."""

    def __init__(self, app: VaeApp, pilot, fake: FakeRun, clock: Clock, every_tick: Callable[[], None] = lambda: None) -> None:
        self.app, self.pilot, self.fake, self.clock, self.every_tick = app, pilot, fake, clock, every_tick
        self.watched = Watched([(clock.now, app.wire.sent)], [], [clock.now], [], [], [], text_of(app, "#recon-chart"))
        self._ticks = 0

    async def run(self, seconds: float) -> None:
        app, fake, watched = self.app, self.fake, self.watched
        for _ in range(round(seconds / TICK)):
            fake.tick()
            self.every_tick()
            app.source.poll()
            self.clock.now += TICK
            self._ticks += 1
            app.tick_frame()
            if self._ticks % 2 == 0:
                app.tick_status()
            if self._ticks % 4 == 0:
                app.tick_images()
            await self.pilot.pause()
            watched.sent.append((self.clock.now, app.wire.sent))
            if not app.covered:
                chart = text_of(app, "#recon-chart")
                if chart != watched.chart:
                    watched.chart = chart
                    watched.chart_changed.append(self.clock.now)
                if self._ticks % 2 == 0:
                    self.note_status()

    def note_status(self) -> None:
        app, status, watched = self.app, text_of(self.app, "#status"), self.watched
        watched.behind.append(self.fake.status.step - shown_step(app))
        if eta := re.search(r"ETA (?:(\d+)h)?(?:(\d+)m)?(\d+)s", status):
            hours, minutes, seconds = (int(part or 0) for part in eta.groups())
            watched.etas.append((self.clock.now, 3600 * hours + 60 * minutes + seconds))
        shown = re.findall(r"\b(recon|KL|loss) (\d[\d,]*(?:\.\d+)?)", status.splitlines()[0])
        last = [(name, loss_number(float(app.telemetry.tail(name.lower(), 1)[0]))) for name, _ in shown]
        watched.losses.append((str(shown), str(last)))

    async def act(self, *keys: str, size: tuple[int, int] | None = None) -> None:
        """What a person does between two ticks: keys pressed, or the terminal resized (the app redraws once
        the size settles). What that repaints at once is noted apart."""
        before = self.app.wire.sent
        for key in keys:
            await self.pilot.press(key)
        if size is not None:
            await self.pilot.resize_terminal(*size)
            await self.pilot.pause(RESIZE_SETTLE_SECONDS + 0.2)
        await self.pilot.pause()
        self.watched.repaints.append((self.clock.now, self.app.wire.sent - before))
        self.watched.sent.append((self.clock.now, self.app.wire.sent))


def shown_step(app: VaeApp) -> int:
    found = re.search(r"step ([\d,]+)", text_of(app, "#status"))
    assert found, f"no step on the status line: {text_of(app, '#status')!r}"
    return int(found.group(1).replace(",", ""))


# -- the budget ------------------------------------------------------------------------------------
def test_the_budget_saves_a_reserve_for_repaints_and_owes_what_they_spend_beyond_it():
    clock = Clock()
    wire = WireBudget(10.0, clock)
    assert wire.balance() == 10_000 * BUCKET_S and wire.allows()  # saved up: paced frames may go
    wire.count("x" * int(10_000 * (BUCKET_S - RESERVE_S)))
    assert not wire.allows() and wire.balance() == 10_000 * RESERVE_S  # what is left is the reserve
    wire.count("\u2580" * 40_000)  # a repaint of 120 KB: a half block is three bytes of UTF-8
    assert wire.balance() == 10_000 * RESERVE_S - 120_000  # owed, never forgotten
    clock.now += 10.0
    assert wire.balance() == 10_000 * RESERVE_S - 20_000 and not wire.allows()
    clock.now += 3600.0
    assert wire.balance() == 10_000 * BUCKET_S  # an hour idle saves no more than the bucket


def test_a_paced_kind_waits_its_floor_or_what_its_share_of_the_wire_takes_to_pay_a_frame():
    clock = Clock()
    wire = WireBudget(2.0, clock)
    pace = Pace(wire, share=0.25, floor_s=CHART_WAIT_S)
    wire.count("x" * 100_000)  # spent: only the floor lets it go
    assert pace.due()  # never drawn
    cost = pace.drawn()
    wire.count("x" * 3_000)  # its frame
    cost()
    assert pace.cost > 0 and pace.wait() == max(CHART_WAIT_S, pace.cost / 500)
    assert not pace.due()
    clock.now += pace.wait()
    assert pace.due()
    other = pace.drawn()
    wire.mark()  # a repaint began before its bytes were counted: they are not its own
    wire.count("x" * 50_000)
    before = pace.cost
    other()
    assert pace.cost == before


async def test_the_driver_counts_every_byte_it_writes():
    wire = WireBudget(10.0, Clock())
    written = []

    class Terminal(HeadlessDriver):
        def write(self, data: str) -> None:
            written.append(data)

    driver = counted(Terminal, wire)(app=None, size=(80, 24))  # type: ignore[arg-type]
    driver.write("\x1b[1;1H\u2580")
    assert wire.sent == len("\x1b[1;1H".encode()) + 3 and written == ["\x1b[1;1H\u2580"]


def test_wire_takes_a_positive_rate():
    assert parse_wire(2.5) == 2.5
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="--wire must be a positive number of KB/s"):
            parse_wire(bad)


# -- the app on a thin link ------------------------------------------------------------------------
THIN_KB = 5.0  # a thin link: at 80x24 in 256 colours the help screen opened and closed costs it 14 s
SIZE = (80, 24)
QUIET_S = 20.0  # after the last action: long enough to pay back what it repainted (it takes 7 to 11 s)


async def a_person_over_a_link(folder: Path, kb: float, action: str, quiet: float = QUIET_S, size: tuple[int, int] = SIZE) -> Watched:
    """A run watched from its start (or, for "watcher", joined 300 steps in), one action of a person's,
    then `quiet` seconds of watching."""
    fake = FakeRun(folder / "watched")
    if action == "compare":
        FakeRun(folder / "other", epochs=2).finish()
    every_tick = lambda: None  # noqa: E731
    if action == "script":  # output and pane titles every tick: the script's progress bar
        fake.status.script, fake.status.terms = "python main.py", {"loss": "what backward() was called on", "pictures": "input | output 0"}
        every_tick = lambda: fake.run.log_path.open("a").write(f"\rtrain: step {fake.status.step} loss {fake.rng.random():.4f}")  # noqa: E731
    if action == "watcher":
        fake.advance(300)
    clock = Clock()
    app = on_clock(fake, kb, clock)
    async with app.run_test(headless=False, size=size) as pilot:
        driven = Driven(app, pilot, fake, clock, every_tick)
        await driven.run(4)
        driven.watched.when = clock.now
        if action == "help":
            await driven.act("question_mark")
            await driven.run(5)
            driven.watched.when = clock.now
            await driven.act("escape")
        elif action == "resize":
            await driven.act(size=(size[0] - 10, size[1] - 6))
            await driven.run(5)
            driven.watched.when = clock.now
            await driven.act(size=size)
        elif action == "compare":
            await driven.act("p", "enter", "escape")
        await driven.run(quiet)
    driven.watched.overlays = [o.name for o in app.comparison.overlays]
    return driven.watched


SCENARIOS = {  # name: (KB/s, action, quiet seconds)
    **{action: (THIN_KB, action, QUIET_S) for action in ("help", "resize", "compare", "watcher", "script")},
    "open": (10_000.0, "script", QUIET_S),  # the script's again, with nothing held back
}
WATCH_ALL = """
import asyncio, dataclasses, json, sys
from pathlib import Path
sys.path[:0] = [sys.argv[1]]
import test_wire

for name, (kb, action, quiet) in test_wire.SCENARIOS.items():
    folder = Path(sys.argv[2]) / name.replace(" ", "-")
    folder.mkdir()
    watched = asyncio.run(test_wire.a_person_over_a_link(folder, kb, action, quiet))
    print("WATCHED " + json.dumps([name, dataclasses.asdict(watched)]), flush=True)
"""


def untupled(value: object) -> object:
    """JSON's lists of pairs back as lists of tuples."""
    return [tuple(v) if isinstance(v, list) else v for v in value] if isinstance(value, list) else value


@pytest.fixture(scope="module")
def watchings(tmp_path_factory) -> dict[str, Watched]:
    """Every scenario, watched in a Python of its own, in a 256-colour terminal: Rich and Textual keep each
    style's codes for the first colour depth they met, so in a process that drew in another one (as this
    test session's other tests do) every count of bytes comes out otherwise."""
    folder = tmp_path_factory.mktemp("watchings")
    env = {**os.environ, "TERM": "xterm-256color"}
    for name in ("COLORTERM", "NO_COLOR"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", WATCH_ALL, str(Path(__file__).parent), str(folder)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"the watchings ended with {done.returncode}: {done.stderr[-3000:]}"
    found = {}
    for line in done.stdout.splitlines():
        if line.startswith("WATCHED "):
            name, fields = json.loads(line.removeprefix("WATCHED "))
            found[name] = Watched(**{key: untupled(value) for key, value in fields.items()})
    return found


@pytest.mark.parametrize("action", ["help", "resize", "compare", "watcher", "script"])
def test_over_a_thin_link_the_numbers_are_live_the_charts_move_and_repaints_are_paid_back(watchings, action):
    """After each thing a person does, the status line says the run's step within a tick and the charts
    redraw within about 2 s; the repaint goes at once and is paid back: by the end every byte sent, the
    repaints' too, is one the wire paid for, and apart from the repaints no 30 s sends more than it allows."""
    watched = watchings[action]
    first = next(t for t in watched.chart_changed if t > 0)
    assert first <= CHART_WAIT_S + 2 * TICK, f"the first chart frame with batches came after {first:g} s"
    assert max(watched.behind) <= FakeRun.STEPS_PER_TICK, f"the status line was {max(watched.behind)} steps behind the run"
    assert all(shown == last for shown, last in watched.losses), "the status line's losses are not the run's latest"
    named = "'recon'" in watched.losses[-1][0] if action != "script" else "'loss'" in watched.losses[-1][0] and "KL" not in watched.losses[-1][0]
    assert named, f"the status line named {watched.losses[-1][0]}"
    assert len(watched.etas) > 20 and watched.eta_jumps() <= 2.0, f"the ETA jumped by {watched.eta_jumps():g} s"
    still = watched.longest_still(watched.when)
    assert still <= CHART_WAIT_S + 2 * TICK, f"after the {action} the charts stood still for {still:g} s"
    if action == "compare":
        assert watched.overlays == ["other"] and "other" in watched.chart
        drawn = next(t for t in watched.chart_changed if t > watched.when)
        assert drawn - watched.when <= CHART_WAIT_S + 2 * TICK, f"the compared run was drawn {drawn - watched.when:g} s after it was picked"
    rate = THIN_KB * 1000
    allowed = rate * (watched.elapsed + BUCKET_S)
    assert watched.total <= allowed, f"{watched.total:,} bytes in {watched.elapsed:g} s, more than {allowed:,.0f}: repaints not paid back"
    most = watched.most_paced_in_a_window()
    assert most <= rate * (WINDOW_S + BUCKET_S), f"{most:,} bytes besides repaints in {WINDOW_S:g} s, more than {THIN_KB:g} KB/s allows"


def test_with_the_wire_open_the_same_watching_sends_more_than_the_thin_link_allowed(watchings):
    """The test above's positive control: the same timeline with nothing held back sends more than the thin
    wire allowed, and draws more chart frames, so there the pacing did the work (not the CPU budget)."""
    thin, wide = watchings["script"], watchings["open"]
    allowed = THIN_KB * 1000 * (wide.elapsed + BUCKET_S)
    assert wide.total > allowed, f"with nothing held back {wide.total:,} bytes, within the {allowed:,.0f} the thin wire allows"
    assert len(wide.chart_changed) > len(thin.chart_changed)


THEMES = """
import asyncio, re, sys
from textual.drivers.headless_driver import HeadlessDriver
from vae_tui.tui.app import KeepGreys, VaeApp
from vae_tui.watching.follow import RunWatch

written = []
GREY = "(?:16|231|23\\d|24\\d|25[0-5])"
GREY_CELL = re.compile(f"38;5;{GREY};48;5;{GREY}m\\u2580")


class Terminal(HeadlessDriver):
    is_headless = False

    def write(self, data):
        written.append(data)


async def main():
    app = VaeApp(RunWatch(sys.argv[1]), driver=Terminal)
    async with app.run_test(headless=False, size=(80, 24)) as pilot:
        for _ in range(300):
            await pilot.pause(0.05)
            if GREY_CELL.search("".join(written)):
                break
        seen = [("first", bool(GREY_CELL.search("".join(written))))]
        for theme in ("textual-light", "textual-dark"):
            written.clear()
            app.theme = theme  # every cell painted again, through a colour filter Textual makes anew
            await pilot.pause()
            sent = "".join(written)
            seen.append((theme, bool(GREY_CELL.search(sent)) and any(isinstance(f, KeepGreys) for f in app.get_line_filters())))
    print(seen)


asyncio.run(main())
"""


def test_a_theme_change_keeps_the_pictures_greys_short_on_the_wire(fake_run, tmp_path):
    """In 24-bit colour Textual writes every colour as an RGB triple; the pictures' greys go as the 256-colour
    greys they are, half the bytes, and still do after the theme changes. In a process of its own, as the
    monitor always is: Textual keeps each style's codes for the first colour depth it met."""
    fake = fake_run().advance(30)
    script = tmp_path / "themes.py"
    script.write_text(THEMES)
    env = {**os.environ, "COLORTERM": "truecolor", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    done = subprocess.run([sys.executable, str(script), str(fake.run.path)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[('first', True), ('textual-light', True), ('textual-dark', True)]", done.stdout
