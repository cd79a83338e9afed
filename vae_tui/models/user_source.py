"""Your model's class, found from `--model FILE.py:Class` or `package.module:Class`: loaded as its own
module (a training script's code at module level is refused, said how), and where it came from, for
checkpoints (a file's hash, to say when it changed)."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from vae_tui.errors import ConfigError


@dataclass(frozen=True)
class Source:
    """Where the class comes from: what a checkpoint records to rebuild it."""

    spec: str  # FILE.py:Class with an absolute path, or package.module:Class
    file: str | None  # the file the class is defined in
    sha256: str | None  # of that file, to say when it changed since a checkpoint


def load_class(spec: str) -> tuple[type, Source]:
    """The class `spec` names; each way it can be wrong is one ConfigError."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ConfigError(f"--model must be FILE.py:Class or package.module:Class, got {spec!r}")
    if where.endswith(".py") or os.sep in where:
        path = Path(where).expanduser().resolve()
        module = _module_from_file(path)
        spec = f"{path}:{name}"
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())  # as `python -c "import disvae.models.vae"` finds a package in the working directory
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ConfigError(f"--model: cannot import {where} ({exc})") from None
        except Exception as exc:
            raise ConfigError(f"--model: importing {where} failed: {type(exc).__name__}: {exc}") from None
    cls = getattr(module, name, None)
    if cls is None:
        found = [n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == module.__name__]
        listed = f"; it has {', '.join(found)}" if found else ""
        raise ConfigError(f"--model: {where} has no class {name}{listed}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"--model: {name} in {where} is not a torch.nn.Module subclass")
    file = inspect.getsourcefile(cls)
    return cls, Source(spec, file, file_hash(file) if file else None)


def _module_from_file(path: Path) -> Any:
    """The file imported as a module of its own name (`main` for main.py, unless a module of that name
    is already loaded), with sys.argv as if it ran alone: a training script's module-level argparse
    sees none of vae-tui's options, and its `if __name__ == "__main__":` block does not run."""
    if not path.is_file():
        raise ConfigError(f"--model: no such file {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        compile(text, str(path), "exec")
    except SyntaxError as exc:
        raise ConfigError(f"--model: {path.name} line {exc.lineno}: syntax error: {exc.msg}") from None
    hashed = f"vae_tui_user_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    if hashed in sys.modules:
        return sys.modules[hashed]
    name = path.stem if path.stem.isidentifier() and path.stem not in sys.modules else hashed
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # the file may import its neighbours
    loader_spec = importlib.util.spec_from_file_location(name, path)
    assert loader_spec is not None and loader_spec.loader is not None
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = sys.modules[hashed] = module
    argv, sys.argv = sys.argv, [str(path)]
    try:  # what the script's own code prints on import (an argparse usage) would read as vae-tui's words
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            loader_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[name], sys.modules[hashed]
        line = user_line(exc, str(path))
        what = "exits while it is imported" if isinstance(exc, SystemExit) else f"failed: {type(exc).__name__}: {exc}"
        advice = (
            ("; it runs a script's code at module level: move the class into a file of its own (e.g. model.py) and point --model at that")
            if runs_script_code(text)
            else ""
        )
        raise ConfigError(f"--model: importing {path.name}{line} {what}{advice}") from None
    finally:
        sys.argv = argv
    return module


def runs_script_code(text: str) -> bool:
    """Whether a file does more at module level than import and define (argparse, data, a training loop)."""
    quiet = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for node in ast.parse(text).body:
        if isinstance(node, quiet) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            continue
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and not any(isinstance(n, ast.Call) for n in ast.walk(node)):
            continue  # constants
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            continue  # never runs on import
        return True
    return False


def file_hash(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def user_line(exc: BaseException, file: str) -> str:
    """' (line N)' of the deepest frame of the exception in `file`, or ''."""
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == file:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" (line {line})" if line else ""


def source_of(spec: str) -> Source:
    return load_class(spec)[1]


def changed_since(state: dict[str, Any]) -> str | None:
    """What to say when a checkpoint's model file has changed since it was written, else None."""
    saved = state.get("model_source") or {}
    if not saved.get("sha256") or not saved.get("spec") or saved["sha256"] == source_of(saved["spec"]).sha256:
        return None
    return f"{saved.get('file') or saved['spec']} has changed since the checkpoint was written: its weights are loaded into the class as the file is now"
