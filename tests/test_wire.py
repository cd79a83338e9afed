"""The monitor's bytes to the terminal: counted as they leave, and paced by --wire."""

import pytest

from conftest import pilot_wait
from helpers import text_of
from vae_tui.errors import ConfigError
from vae_tui.tui.app import VaeApp
from vae_tui.tui.wire import BURST_S, PACED_SHARE, WireBudget, parse_wire


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_lets_through_what_the_rate_pays_for_and_no_more():
    clock = Clock()
    wire = WireBudget(10.0, clock)
    write = wire.counting(lambda data: None)
    assert wire.allows()  # a budget saved up: a first frame goes at once
    write("x" * int(10_000 * PACED_SHARE * BURST_S + 1))  # a big frame spends it all, and a byte more
    assert not wire.allows()
    clock.now += 0.5
    assert wire.allows()  # half a second pays for 4,250 bytes
    write("\u2580" * 2000)  # 6,000 bytes: a half block is three bytes of UTF-8
    assert wire.sent == int(10_000 * PACED_SHARE * BURST_S + 1) + 6000
    assert not wire.allows()
    clock.now += 3600.0
    wire.allows()
    write("y" * int(10_000 * PACED_SHARE * BURST_S) + "y")  # an hour idle buys no more than BURST_S seconds
    assert not wire.allows()


def test_wire_takes_a_positive_rate():
    assert parse_wire(2.5) == 2.5
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="--wire must be a positive number of KB/s"):
            parse_wire(bad)


async def test_a_thin_wire_holds_the_charts_back_and_the_status_line_agrees_with_them(fake_run):
    fake = fake_run().advance(6)  # batches before the first frame
    app = VaeApp(fake.watch(), wire_kb=0.001)  # a byte a second: after the first frame, no paced frame may go
    async with app.run_test(size=(120, 40)) as pilot:
        chart = app.query_one("#recon-chart")
        await pilot_wait(pilot, lambda: chart.drawn_key and chart.drawn_key[1] > 0, "the first frame, a chart drawn with batches")
        app.wire.sent += 10**6  # as if a megabyte had just been sent
        await pilot_wait(pilot, lambda: app.telemetry.status().step > chart.drawn_key[1] + 30, "the run to go on", driving=fake)
        # From here on nothing awaits, so no timer runs between the looks: a forced redraw (the one that
        # follows the first resize, say) goes whatever the wire says, and is not what is checked here.
        drawn, charted = chart.drawn_key, app.shown_status().step
        for _ in range(5):  # the frames the app's timer would draw: all held back
            app.tick_frame()
        assert chart.drawn_key == drawn
        app.tick_status()  # never held back: it says the step the charts show, not the run's newest
        assert charted == drawn[1] < app.telemetry.status().step
        assert f"step {charted:,} ·" in text_of(app, "#status").replace("\n", "")
