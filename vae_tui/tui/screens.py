"""Modal screens: help (every key), explain (what the charts mean), confirm quit."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Markdown, Static

from vae_tui.errors import VaeTuiError
from vae_tui.runfile.control import setting_problem
from vae_tui.runfile.findings import Finding
from vae_tui.runfile.schema import change_words
from vae_tui.watching.compare import Comparison

KEYS = [
    ("space", "pause / resume training (the footer says which)"),
    ("c", "save a checkpoint now (checkpoints/last.pt in the run directory)"),
    ("[ ]", "halve / double the learning rate, from the trainer's next step"),
    ("p", "compare: pick other runs of this folder to draw over this one's charts"),
    ("o", "line the compared runs up by step or by epoch"),
    ("n", "terms chart: the run's next term beyond reconstruction and KL (lpips, d_loss, perplexity, a second optimizer's loss)"),
    ("k", "type a new learning rate or beta (the KL weight), from the trainer's next step; a diagnosis's fix comes filled in"),
    ("q", "quit. From vae-tui train: asks first while training, saves a checkpoint, stops the run. From vae-tui watch: closes this watcher, training goes on"),
    ("x", "(vae-tui watch) stop the run: asks first, saves a checkpoint"),
    ("d", "(vae-tui train) detach: close the monitor, training goes on in the background"),
    ("l", "log scale on the charts, on/off"),
    ("s", "smoothed line (exponential moving average) on/off"),
    ("w", "charts show the recent window of raw batches, or the whole run"),
    ("a", "art mode: half blocks (sharper, grey levels) or a character ramp (no colour)"),
    ("t", "latent view: where test images land in z, against PCA; KL per dimension; traversals"),
    ("e", "explain: what the run is telling you (the line under the charts), what the charts and pictures mean"),
    ("?", "this help"),
    ("escape", "close a help or explain screen"),
]

EXPLAIN = """\
# What am I looking at?

{this_run}**The model.** The encoder turns each image into a Gaussian over a small latent code z: a mean
`mu` and a log-variance `logvar` per dimension. We draw one z from it
(`z = mu + exp(logvar / 2) * eps`, the reparameterization trick) and the decoder turns z back
into an image's worth of parameters: a probability for every pixel value, by default. See
`vae_tui/models/vae.py`: `--arch mlp`, two layers of neurons each way, every pixel wired to every
unit. `--arch conv` (`vae_tui/models/{conv}`) replaces the outer layers with
convolutions: small filters slid over the picture, each stride halving it, so nearby pixels are
read together as edges, then shapes. Better for photos and anything larger than a thumbnail.

**Reconstruction (top chart).** `-log p(x|z)`: how surprised the decoder is by the real image,
in nats per image, summed over every pixel value. It should fall fast at first, then slowly.
The grey line is every batch; the coloured line is a moving average. What it measures depends
on the likelihood, the distribution the decoder's output describes:

- `--likelihood bernoulli` (the default, the classic choice): each pixel value is a coin whose
  chance of heads the decoder gives; the term is the binary cross-entropy ({recon}). Exact for
  black-and-white images; for grey or colour values it has a floor above zero even when the
  reconstruction is perfect, so compare runs by their drop, not by reaching 0.
- `--likelihood gaussian`: each pixel value is drawn around the decoder's mean with a spread
  sigma that the model learns, one per channel ({gaussian}). Small sigma means "I am sure";
  the model trades sharpness against KL by itself. A density, not a probability: the term can
  go below zero, and is comparable only between gaussian runs.

**KL divergence (middle chart).** How far each image's Gaussian is from the prior N(0, I), in
nats per image. It usually *rises* early, as the encoder starts to put information in z, then
settles. It keeps the latent space smooth, so random z decode to plausible images.

**Their sum is the negative ELBO** (with `--beta 1`), the loss being minimised. The ELBO is a
lower bound on log p(x): pushing the loss down pushes up how likely the model finds the data.

**Train vs test (bottom chart).** The loss per epoch on the training images and on held-out
test images. Healthy: both fall and stay close. Test rising while train falls: the model is
memorising (overfitting).

**Unhealthy curves.** KL collapsing to almost 0 while reconstruction stalls: *posterior
collapse*, the decoder ignores z (try a smaller `--beta`). Losses jumping to NaN or spiking:
the learning rate is too high (try a smaller `--lr`). A flat reconstruction line from the
start: the learning rate may be too low.

**The pictures.** *Reconstructions*: test images (left of each pair) and what the model makes of
them (right); they sharpen as reconstruction loss falls. *Samples*: the decoder applied to a
fixed set of random z ~ N(0, I), the same z every time, so you watch the same samples
turn from blur into pictures like the data. That is the model *generating*, not copying.

# The latent view (press t)

**Where images land.** The encoder (`Encoder.forward`, {encoder}) gives each test image a mean
`mu` in latent space. The left scatter shows those means, squeezed to 2-D by PCA when z has more
dimensions, one colour per class (the legend names them; pictures without class folders are drawn
in one colour). The model is never told the labels; if the colours still form clusters, the
code has learned what makes a 3 a 3, or a cat a cat. Below it: the same images' raw pixels,
projected to 2-D by PCA. That is the best a *linear* map can do.

**PCA against the VAE.** PCA with as many components as z has dimensions is the linear
baseline: encode by projection, decode by the transpose. The line at the top compares both on
the same test images, by the classic reconstruction term (Bernoulli -log p(x|z) with each
reconstruction read as pixel probabilities, one yardstick for both whatever the run's
likelihood) and by mean squared error per pixel. `vae-tui compare-pca RUN`
prints the same table with pictures. PCA can win on a small image like 8x8 digits; the VAE's
advantage is a non-linear decoder and a latent space you can *sample* from.

**Active units.** The bars are the KL term (`kl_divergence`, {kl}) split per latent
dimension. A dimension near 0 carries no information about the image: the decoder ignores it.
Many such dimensions is *posterior collapse*; a smaller `--beta` or `--kl-warmup` helps.

**Traversals.** For the three dimensions with the most KL, the decoder (`Decoder.forward`,
{decoder}) is shown z with that one dimension walking from -3 to +3 and the rest at 0. What
changes along a row is what that dimension encodes: slant, thickness, which digit.

**beta and warm-up.** The loss is `recon + beta * KL` (`vae_loss`, {loss}). With
`--kl-warmup N`, beta rises from 0 to `--beta` over the first N epochs (the status line shows
it), so the decoder learns to use z before the KL term pulls everything to the prior.

**The GPU on the status line.** On an NVIDIA GPU the status line says how *busy* it is (the
share of time a kernel was running, as nvidia-smi counts it), its memory in use (every process's),
its temperature and power, read about once a second. A small VAE asks a big GPU for a few
microseconds of arithmetic per batch, so a GPU that is mostly idle means the *host* is the
bottleneck: Python, kernel launches, data loading. vae-tui's CUDA-graph step (`--step auto`) turns
each batch into one launch; a larger `--batch-size` gives each launch more work; data streamed
from disk (`--data-placement stream`) can starve it. A GPU at 100% is doing arithmetic, and then
only a bigger GPU, bf16 or a smaller model goes faster.

**An honest number.** The negative ELBO is an *upper* bound on -log p(x). At the end of training
(on the first 2,000 test images) and with `vae-tui eval` (on all of them), K samples from q(z|x)
per test image give the importance-weighted bound, tighter the more samples; it can never exceed
the ELBO from the same samples. Both are in
nats per image, with their standard errors, in `eval.json`.

Press escape to close.
"""


class HelpScreen(ModalScreen[None]):
    """Every key; it scrolls when the terminal is too small to show them all."""

    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        keys.add_column(justify="right", style="bold", no_wrap=True)
        keys.add_column()  # wraps under itself, not under the keys
        for key, text in KEYS:
            keys.add_row(key, text)
        with VerticalScroll(id="help-box", classes="dialog"):
            yield Static("[b]Keys[/b]  (arrows or the mouse wheel scroll, escape closes)", classes="dialog-title")
            yield Static(keys)


def model_lines(name: str, module: str = "vae_tui.models.vae") -> str:
    """Where in vae_tui/models/vae.py (or another module) a class or function lives, e.g. "vae.py lines 40-42".

    Read from the file's text by its indentation, not by importing it (the monitor never imports torch) nor
    by `ast.parse`, which CPython 3.11 can fail with a SystemError when called deep in Textual's stack.
    """
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    lines = Path(spec.origin).read_text(encoding="utf-8").splitlines()
    start, end, indent = 0, len(lines), -1
    for part in name.split("."):
        pattern = re.compile(rf"^(\s*)(?:async\s+)?(?:class|def)\s+{re.escape(part)}\b")
        found = next((i, m) for i in range(start, end) if (m := pattern.match(lines[i])) and len(m.group(1)) > indent)
        start, indent = found[0], len(found[1].group(1))
        end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() and _indent(lines[i]) <= indent), len(lines))
    while end > start and not lines[end - 1].strip():
        end -= 1
    first = start
    while first > 0 and lines[first - 1].strip().startswith("@") and _indent(lines[first - 1]) == indent:
        first -= 1
    return f"{Path(spec.origin).name} lines {first + 1}-{end}"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


YOURS = (
    " It is your own model, read from that file (`--model`): the model paragraph below is about"
    " vae-tui's own, and every chart and picture means the same for yours, which trains on the same loss."
)


def findings_text(findings: list[Finding]) -> str:
    """What the run is telling you now, first on the explain screen: each finding in full, and how it is found."""
    if not findings:
        return ""
    lines = ["## What the run is telling you", ""]
    for finding in findings:
        offer = f" Press **k** to set {change_words(finding.fix)} (filled in; nothing changes until you press enter)." if finding.fix else ""
        text = finding.text[len(finding.headline) :] if finding.text.startswith(finding.headline) else f": {finding.text}"
        lines += [f"**{finding.headline}**{text}.{offer}", ""]
    lines += ["How each is found, and where it can be wrong: the README's *Diagnoses* section.", "", "---", ""]
    return "\n".join(lines)


def explain_text(this_run: str = "", findings: list[Finding] | None = None) -> str:
    """`this_run`: the run's model in a few words ("conv 32-64-128, z 20, gaussian"), said first, after
    what the run is telling you now (`findings`)."""
    return findings_text(findings or []) + EXPLAIN.format(
        this_run=(f"**This run:** a {this_run} VAE." + (YOURS if "(yours)" in this_run else "") + "\n\n") if this_run else "",
        encoder=model_lines("Encoder.forward"),
        decoder=model_lines("Decoder.forward"),
        recon=model_lines("BernoulliLikelihood"),
        gaussian=model_lines("GaussianLikelihood"),
        conv=model_lines("ConvEncoder.forward", "vae_tui.models.conv"),
        kl=model_lines("kl_divergence"),
        loss=model_lines("vae_loss"),
    )


class ExplainScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,e,q", "dismiss", "Close")]

    def __init__(self, this_run: str = "", findings: list[Finding] | None = None) -> None:
        super().__init__()
        self.this_run, self.findings = this_run, findings or []

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="explain-box", classes="dialog"):
            yield Markdown(explain_text(self.this_run, self.findings))


class ConfirmQuit(ModalScreen[bool]):
    """Quitting mid-run saves a checkpoint first; ask, since it ends the run."""

    BINDINGS = [
        Binding("y,q,enter", "answer(True)", "Quit"),
        Binding("n,escape", "answer(False)", "Keep training"),
    ]

    QUESTION = "Training is still running.\nSave a checkpoint and quit?"
    ANSWERS = "[b]y[/b] quit   [b]n[/b] keep training"

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box", classes="dialog"):
            yield Static(self.QUESTION, classes="dialog-title")
            yield Static(self.ANSWERS)

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class ConfirmStop(ConfirmQuit):
    """A watcher stopping someone's run: ask, since it ends the run for every watcher."""

    BINDINGS = [
        Binding("y,x,enter", "answer(True)", "Stop"),
        Binding("n,escape", "answer(False)", "Keep training"),
    ]
    ANSWERS = "[b]y[/b] stop   [b]n[/b] keep training"

    def __init__(self, going_on: str) -> None:
        """`going_on`: how the run goes on after the stop (going_on_words)."""
        super().__init__()
        self.QUESTION = f"Stop this run? The trainer saves a checkpoint and ends;\n{going_on}."


class SteerScreen(ModalScreen[dict]):
    """A new learning rate or beta, typed while the run trains: only what was changed is sent, and a
    value that cannot be taken is said here, in one line, with nothing sent."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, lr: float, beta: float, suggestion: Finding | None = None) -> None:
        """`suggestion`: a finding whose fix is filled in (sent only with enter, as any change)."""
        super().__init__()
        self.lr, self.beta, self.suggestion = lr, beta, suggestion

    def compose(self) -> ComposeResult:
        fix = self.suggestion.fix if self.suggestion is not None else {}
        with Vertical(id="steer-box", classes="dialog"):
            yield Static("Change the run as it trains (from its next step)", classes="dialog-title")
            if self.suggestion is not None and fix:
                yield Static(f"[b]{self.suggestion.headline}[/b]: filled in, {change_words(fix)} (now {self._now_words(fix)})\n", id="steer-suggestion")
            yield Static("learning rate")
            yield Input(f"{fix.get('lr', self.lr):g}", id="steer-lr")
            if math.isfinite(self.beta):
                yield Static("beta, the KL weight (1 is the plain ELBO; during a warm-up, where it rises to)")
                yield Input(f"{fix.get('beta', self.beta):g}", id="steer-beta")
            else:
                yield Static("[dim]beta: your script's own, in its loss, which vae-tui cannot change[/]")
            yield Static("[b]enter[/b] change   [b]escape[/b] leave as it is", id="steer-help")
            yield Static("", id="steer-problem")

    def _now_words(self, fix: dict[str, float]) -> str:
        return ", ".join(f"{name} {getattr(self, name):g}" for name in fix)

    def on_input_submitted(self) -> None:
        changes, problems = {}, []
        for name, widget_id, now in (("lr", "#steer-lr", self.lr), ("beta", "#steer-beta", self.beta)):
            if not self.query(widget_id):
                continue  # a beta vae-tui cannot change has no field
            text = self.query_one(widget_id, Input).value.strip()
            try:
                value = float(text)
            except ValueError:
                value = text  # type: ignore[assignment]
            problem = setting_problem(name, value)
            if problem:
                problems.append(problem)
            elif value != now:
                changes[name] = value
        if problems:
            self.query_one("#steer-problem", Static).update(f"[b red]{problems[0]}[/]: nothing was changed")
            return
        self.dismiss(changes)

    def action_cancel(self) -> None:
        self.dismiss({})


class RunPicker(ModalScreen[None]):
    """The runs beside this one (the `vae-tui runs` table): enter adds one to the charts or takes it off."""

    BINDINGS = [Binding("escape,p,q", "close", "Close")]

    def __init__(self, watched: Path, comparison: "Comparison") -> None:
        super().__init__()
        self.watched, self.comparison = watched, comparison
        self.paths: list[Path] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-box", classes="dialog"):
            yield Static("Compare: [b]enter[/b] draws a run over this one's charts, or takes it off   [b]escape[/b] close", classes="dialog-title")
            yield DataTable(id="picker-table", cursor_type="row", zebra_stripes=True)
            yield Static("", id="picker-problem")

    def on_mount(self) -> None:
        from vae_tui.runfile.layout import find_runs
        from vae_tui.watching.catalog import epochs_words, summarize

        table = self.query_one(DataTable)
        table.add_columns("", "run", "dataset", "status", "epochs", "best test loss")
        watched = self.watched.resolve()
        self.paths = [p for p in reversed(find_runs(self.watched.parent)) if p.resolve() != watched]  # newest first
        for path in self.paths:
            s = summarize(path)
            best = f"{s.best_test_loss:.3f}" if s.best_test_loss < float("inf") else "-"
            table.add_row(self._mark(path), path.name, s.dataset, s.status, epochs_words(s), best, key=str(path))
        if not self.paths:
            self.query_one("#picker-problem", Static).update(f"no other runs in {self.watched.parent}")
        table.focus()

    def _mark(self, path: Path) -> Text:
        overlay = next((o for o in self.comparison.overlays if o.path.resolve() == path.resolve()), None)
        return Text("●", style=f"rgb({overlay.color[0]},{overlay.color[1]},{overlay.color[2]})") if overlay else Text("·", "dim")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        path = Path(str(event.row_key.value))
        try:
            self.comparison.toggle(path)
        except VaeTuiError as exc:
            self.query_one("#picker-problem", Static).update(f"[b red]{exc}[/]")
            return
        self.query_one(DataTable).update_cell(event.row_key, self.query_one(DataTable).ordered_columns[0].key, self._mark(path))

    def action_close(self) -> None:
        self.dismiss(None)
