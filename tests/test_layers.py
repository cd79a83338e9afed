"""The layers hold: no import cycles, the core knows nothing of Textual, the app knows nothing of the
trainer, and the watching side (which `vae-tui train` itself is) never imports torch."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "vae_tui"

# The monitor's process: `vae-tui train` in a terminal, `watch`, `runs`, `export`. No torch here.
WATCHING = [
    "vae_tui.cli",
    "vae_tui.launch.spawn",
    "vae_tui.launch.monitor",
    "vae_tui.launch.prepare",
    "vae_tui.tui.app",
    "vae_tui.watching.catalog",
    "vae_tui.watching.export",
    "vae_tui.runfile.files",
    "vae_tui.data",
]
# What the app may not reach into: the trainer's side.
TRAINER_SIDE = (
    "vae_tui.training",
    "vae_tui.models",
    "vae_tui.evaluation",
    "vae_tui.integrations",
    "vae_tui.hooked",
    "vae_tui.launch.run_here",
    "vae_tui.launch.worker",
    "torch",
)  # packages, and the two launcher modules that train


# The lazy edges that are part of the design: `vae_tui.init` (your loop, with torch) is imported by the
# package's __getattr__, and `vae_tui.log` asks the hooks' registry, only when a script calls them, so
# `import vae_tui` (which the monitor's modules do) stays light.
LAZY = [
    ("vae_tui", "vae_tui.integrations"),
    ("vae_tui", "vae_tui.integrations.your_loop"),
    ("vae_tui", "vae_tui.hooked"),
    ("vae_tui", "vae_tui.hooked.registry"),
]
# The trainer's side and the public loop API sit below the launcher: they never import it.
BELOW_LAUNCH = ("vae_tui.training", "vae_tui.integrations", "vae_tui.hooked", "vae_tui.integrations.your_loop", "vae_tui.models")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:`, which only type checkers import."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        yield node
        yield from runtime_nodes(node)


def imports() -> dict[str, set[str]]:
    """Every vae_tui module and the vae_tui modules it imports, anywhere in its body (lazy imports too)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name, found = module_name(path), set()
        for node in runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = found
    modules = set(graph)
    graph = {name: {m for m in found if m in modules or m.split(".")[0] in ("torch", "textual")} for name, found in graph.items()}
    for importer, imported in LAZY:
        graph[importer].discard(imported)
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycles_between_modules():
    graph = imports()
    packages = {name for name in graph if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()}
    own = {name: {m for m in found if m in graph and m not in packages and m != name} for name, found in graph.items()}
    cycles = sorted(name for name in own if name not in packages and name in reachable(own, name))
    assert not cycles, f"modules that import themselves through others: {cycles}"


def test_the_core_never_imports_textual_and_the_app_never_imports_the_trainer():
    graph = imports()
    core = [name for name in graph if not name.startswith("vae_tui.tui") and name not in ("vae_tui.cli", "vae_tui.launch.monitor")]
    assert [n for n in core if any(m.startswith("textual") for m in graph[n])] == []
    app_side = {m for name in graph if name.startswith("vae_tui.tui") for m in reachable(graph, name) | {name}}
    assert sorted(m for m in app_side if m.startswith(TRAINER_SIDE)) == []


def test_the_watching_side_imports_no_torch_even_when_it_runs():
    """At run time too: lazy imports included, the explain screen's line numbers included."""
    code = (
        "import sys, importlib\n"
        f"for name in {WATCHING!r}: importlib.import_module(name)\n"
        "from vae_tui.tui.screens import explain_text\n"
        "assert 'vae.py lines' in explain_text()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sklearn', 'torchvision'))\n"
        "assert not bad, bad[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{module_name(path)}.{node.name}")
    assert long == []


def test_training_and_the_integrations_never_import_the_launcher():
    graph = imports()
    upward = sorted(f"{name} -> {m}" for name, found in graph.items() if name.startswith(BELOW_LAUNCH) for m in found if m.startswith("vae_tui.launch"))
    assert upward == []


def test_the_code_passes_ruff():
    """The lint rules in pyproject.toml (pyflakes, pycodestyle, import order) and its format, on everything in the repository."""
    root = PACKAGE.parent
    for command in (["check"], ["format", "--check"]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--no-cache", "vae_tui", "tests", "benchmarks", "scripts"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"ruff {' '.join(command)}: " + done.stdout[-3000:] + done.stderr[-1000:]


def test_the_code_passes_mypy():
    """The types, as pyproject.toml configures mypy, on the whole package."""
    root = PACKAGE.parent
    done = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
