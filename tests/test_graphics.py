"""Real pixels where the terminal can: the choice (--images), the picture grid, and sending a picture only when it changed."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import pilot_wait
from vae_tui.errors import ConfigError
from vae_tui.tui.graphics import GraphicsPane, PictureMode, choose, columns_for, grid, sharp

TTY = {"TERM": "xterm-256color"}


def never_asked() -> str:
    raise AssertionError("the terminal was asked")


def test_blocks_and_ramp_never_ask_the_terminal():
    assert choose("blocks", TTY, tty=True, detect=never_asked) == PictureMode("blocks")
    assert choose("ramp", TTY, tty=True, detect=never_asked) == PictureMode("ramp")


def test_auto_uses_what_the_terminal_answered_and_half_blocks_otherwise():
    assert choose("auto", TTY, tty=True, detect=lambda: "kitty") == PictureMode("graphics", "kitty")
    assert choose("auto", TTY, tty=True, detect=lambda: "sixel") == PictureMode("graphics", "sixel")
    assert choose("auto", TTY, tty=True, detect=lambda: "").mode == "blocks"
    inside = choose("auto", {**TTY, "TMUX": "/tmp/tmux-0/default,1,0"}, tty=True, detect=lambda: "")
    assert inside.mode == "blocks" and "tmux" in inside.why
    with pytest.raises(ConfigError, match="inside tmux, which does not pass graphics through here"):
        choose("graphics", {**TTY, "TMUX": "/tmp/tmux-0/default,1,0"}, tty=True, detect=lambda: "")
    passed = choose("auto", {**TTY, "TMUX": "/tmp/tmux-0/default,1,0"}, tty=True, detect=lambda: "sixel")
    assert passed == PictureMode("graphics", "sixel")  # a tmux that passes sixel through answers for the terminal
    assert choose("auto", TTY, tty=False, detect=never_asked).mode == "blocks"
    assert choose("auto", {"TERM": "dumb"}, tty=True, detect=never_asked).mode == "blocks"


def test_graphics_insists_but_is_refused_where_nothing_can_show_pixels():
    assert choose("graphics", {"TERM": "xterm-kitty"}, tty=True, detect=lambda: "") == PictureMode("graphics", "kitty")
    assert choose("graphics", {"TERM": "xterm", "TERM_PROGRAM": "WezTerm"}, tty=True, detect=lambda: "").protocol == "kitty"
    assert choose("graphics", TTY, tty=True, detect=lambda: "") == PictureMode("graphics", "sixel")
    with pytest.raises(ConfigError, match="needs a terminal that shows pixels"):
        choose("graphics", TTY, tty=False, detect=never_asked)
    with pytest.raises(ConfigError, match="unknown --images 'pixels'"):
        choose("pixels", TTY, tty=True)


def test_the_grid_keeps_every_pixel_and_scales_by_a_whole_factor():
    rng = np.random.default_rng(0)
    grey = [rng.integers(0, 256, (1, 8, 8), dtype=np.uint8) for _ in range(6)]
    pixels = grid([[a, b] for a, b in zip(grey[::2], grey[1::2])], columns=2)
    assert pixels.shape[2] == 3 and pixels.dtype == np.uint8
    assert np.array_equal(pixels[:8, :8, 0], grey[0][0]) and np.array_equal(pixels[:8, :8, 2], grey[0][0])
    image = sharp(pixels, (58, 16), (10, 20))
    factor = image.size[0] // pixels.shape[1]
    assert factor >= 2 and image.size == (pixels.shape[1] * factor, pixels.shape[0] * factor)
    big = np.asarray(image)
    assert np.array_equal(big[::factor, ::factor], pixels)  # nearest neighbour: every pixel a sharp square
    assert columns_for(16, 2.0, (58, 30)) >= 2


async def test_a_picture_is_sent_again_only_when_the_snapshot_changed(fake_run, capsys):
    from vae_tui.tui.app import VaeApp

    fake = fake_run()  # its snapshots come when this test says
    for _ in range(12):
        fake.step()  # an epoch: its snapshot
    app = VaeApp(fake.watch(), PictureMode("graphics", "kitty"))
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.query_one("#recon-images")
        assert isinstance(pane, GraphicsPane) and isinstance(app.query_one("#traversals"), GraphicsPane)
        image, note = pane.query_one(".graphics-image"), pane.query_one(".graphics-note")
        await pilot_wait(pilot, lambda: image.image is not None and not note.display, "the first picture, in place of the note")
        sent, version = image.image, app.telemetry.snapshot_version
        assert not pane.draw(app.telemetry) and image.image is sent  # nothing new: nothing sent
        for _ in range(12):
            fake.step()
        await pilot_wait(pilot, lambda: app.telemetry.snapshot_version > version, "the next snapshot")
        await pilot_wait(pilot, lambda: image.image is not sent, "the new picture to be sent (at most every PICTURE_SECONDS)")
        assert not app.check_action("art_mode", ())  # real pixels have no art mode
    capsys.readouterr()  # kitty's protocol writes its pictures straight to the terminal
