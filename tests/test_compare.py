"""Other runs over this one's charts: --compare, the picker, alignment, live overlays."""

from __future__ import annotations

import re

import pytest

from conftest import pilot_wait
from helpers import drawn, guest, text_of
from vae_tui.errors import ConfigError
from vae_tui.tui.app import VaeApp
from vae_tui.tui.screens import RunPicker
from vae_tui.watching.compare import COLORS, MAX_OVERLAYS, Comparison


def test_overlays_get_distinct_colours_and_a_path_once(fake_run, tmp_path):
    runs = [fake_run(f"run{i}") for i in range(3)]
    comparison = Comparison([runs[0].run.path, runs[1].run.path, runs[0].run.path])
    assert [o.name for o in comparison.overlays] == ["run0", "run1"]
    assert len({o.color for o in comparison.overlays}) == 2
    assert comparison.toggle(runs[2].run.path) and not comparison.toggle(runs[0].run.path)
    assert [o.name for o in comparison.overlays] == ["run1", "run2"] and comparison.overlays[1].color == COLORS[2]
    comparison.add(runs[0].run.path)  # the colour it gave up is free again
    assert comparison.overlays[2].color == COLORS[0]
    with pytest.raises(ConfigError, match="not a vae-tui run directory"):
        comparison.add(tmp_path)
    many = Comparison()
    for i in range(MAX_OVERLAYS):
        many.add(fake_run(f"many{i}").run.path)
    with pytest.raises(ConfigError, match=f"at most {MAX_OVERLAYS}"):
        many.add(runs[0].run.path)


async def test_finished_and_live_runs_are_drawn_over_this_one_and_follow_it(fake_run):
    finished = fake_run("finished", epochs=3).finish()
    live, watched = fake_run("live"), fake_run("watched")
    source = watched.watch()
    source.comparison = Comparison([finished.run.path, live.run.path])  # as `vae-tui watch --compare` makes it
    app = VaeApp(source)
    async with app.run_test(size=(120, 40)) as pilot:
        overlays = app.comparison.overlays
        await pilot_wait(pilot, lambda: all(o.follower.telemetry.batches for o in overlays), "both overlays' batches", driving=[live, watched])
        seen = overlays[1].follower.telemetry.batches
        await pilot_wait(pilot, lambda: overlays[1].follower.telemetry.batches > seen, "the live run to move on", driving=[live, watched])
        await drawn(pilot, app, lambda: "live" in text_of(app, "#recon-chart") and "step" in text_of(app, "#epoch-chart"), "the runs overlaid")
        recon = text_of(app, "#recon-chart")
        assert "watched" in recon and "finished" in recon and "live" in recon  # the legend names every run
        assert "finished test" in text_of(app, "#epoch-chart") and "step" in text_of(app, "#epoch-chart")
        await pilot.press("o")  # by epoch
        await drawn(pilot, app, lambda: "epoch" in text_of(app, "#recon-chart").splitlines()[-1], "the charts by epoch")
        assert app.settings.by_epoch and "epoch" in text_of(app, "#recon-chart").splitlines()[-1]


async def test_the_picker_adds_and_removes_runs_of_the_same_folder(fake_run):
    other, watched = fake_run("other", epochs=2).finish(), fake_run("watched").advance(6)
    app = guest(watched)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("p")
        assert isinstance(app.screen, RunPicker) and app.screen.paths == [other.run.path]
        await pilot.press("enter")
        assert [o.name for o in app.comparison.overlays] == ["other"]
        await pilot.press("enter")
        assert app.comparison.overlays == []
        await pilot.press("enter")
        await pilot.press("escape")
        assert not isinstance(app.screen, RunPicker) and [o.name for o in app.comparison.overlays] == ["other"]
        await pilot_wait(pilot, lambda: app.comparison.overlays[0].follower.telemetry.batches > 0, "the picked run's batches")
        await drawn(pilot, app, lambda: "other" in text_of(app, "#recon-chart"), "the picked run on the chart")


async def test_a_run_with_no_epoch_yet_is_left_off_the_epoch_chart(fake_run):
    old, new, watched = fake_run("old", epochs=3).finish(), fake_run("new"), fake_run("watched").advance(30)
    source = watched.watch()
    source.comparison = Comparison([old.run.path, new.run.path])
    app = VaeApp(source)
    async with app.run_test(size=(120, 40)) as pilot:
        await drawn(pilot, app, lambda: "old test" in text_of(app, "#epoch-chart"), "the finished run's test loss on the epoch chart")
        assert "new" not in text_of(app, "#epoch-chart")  # named only once it has a line to name


async def test_at_80x24_the_compared_runs_are_named_where_the_chart_has_no_room_for_a_legend(fake_run):
    others = [fake_run(name, epochs=2).finish() for name in ("other", "third")]
    watched = fake_run("watched").advance(6)
    source = watched.watch()
    source.comparison = Comparison([other.run.path for other in others])
    app = VaeApp(source)
    async with app.run_test(size=(80, 24)) as pilot:
        legend = re.compile(r"watched · other \d+\.\d\d · third \d+\.\d\d")  # each with its last loss, once its batches are read
        await drawn(pilot, app, lambda: legend.search(text_of(app, "#recon-chart").splitlines()[0]), "the legend of three runs with their losses")


async def test_a_compared_run_with_the_same_term_is_drawn_over_it_and_named(fake_run):
    from vae_tui.runfile.files import write_scalars

    other, watched = fake_run("other", epochs=3).finish(), fake_run("watched")
    for fake, level in ((other, 2.0), (watched, 1.0)):
        write_scalars(fake.run, [{"step": s, "lpips": level + 1.0 / s} for s in range(1, 41)])
    source = watched.watch()
    source.comparison = Comparison([other.run.path])
    app = VaeApp(source)
    async with app.run_test(size=(120, 40)) as pilot:
        overlay = app.comparison.overlays[0]
        await pilot_wait(pilot, lambda: overlay.follower.telemetry.term_names() == ["lpips"], "the compared run's terms", driving=[watched])
        await drawn(pilot, app, lambda: "other" in text_of(app, "#term-chart"), "the compared run over the terms chart")
        assert "watched" in text_of(app, "#term-chart")  # this run, named in the legend beside it
        y = [float(v) for v in re.findall(r"^\s*([\d.]+)┤", text_of(app, "#term-chart"), re.M)]
        assert max(y) > 2.0 and min(y) < 2.0  # both runs' levels on one scale
