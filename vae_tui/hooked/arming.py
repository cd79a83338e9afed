"""At the script's start-up, before it imports anything: note what its argparse parses, and open
the run as soon as torch has been imported. No torch here (a script that never imports torch is
never touched)."""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any, Callable, Sequence

parsed: list[argparse.Namespace] = []  # the script's own arguments, as its argparse parsed them (the last parse)


def arm(say: Callable[[str], None]) -> None:
    """Hooks in place; `say` (the bootstrap's, into the run's hooks.txt) tells `vae-tui run` so, or
    later why the script runs unwatched after all."""
    _note_arguments()
    sys.meta_path.insert(0, AfterImport("torch", lambda: _start(say)))
    say("armed")


def _start(say: Callable[[str], None]) -> None:
    try:
        from vae_tui.hooked.session import watch_script

        watch_script(lambda: vars(parsed[-1]) if parsed else {})
    except Exception as exc:  # the script itself must run on, watched or not
        say(f"unwatched: vae-tui cannot watch it ({type(exc).__name__}: {exc})")


def _note_arguments() -> None:
    """argparse's top-level parse (a subparser's parse is part of it): the run's config is the
    script's own arguments (epochs, lr, batch size), as the script named them."""
    original = argparse.ArgumentParser.parse_known_args
    depth = [0]

    def parse_known_args(self: argparse.ArgumentParser, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None) -> Any:
        depth[0] += 1
        try:
            result = original(self, args, namespace)
        finally:
            depth[0] -= 1
        if depth[0] == 0 and isinstance(result, tuple) and result and isinstance(result[0], argparse.Namespace):
            parsed.append(result[0])
        return result

    argparse.ArgumentParser.parse_known_args = parse_known_args  # type: ignore[method-assign, assignment]


class AfterImport(importlib.abc.MetaPathFinder):
    """Calls `then` once the module `name` has been imported in full: Python has no hook for that, so
    this finder hands the import on to the others and wraps the loader they found."""

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name, self.then, self.busy = name, then, False

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if fullname != self.name or self.busy:
            return None
        self.busy = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.busy = False
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Then(spec.loader, self._done)
        return spec

    def _done(self, module: ModuleType, loader: importlib.abc.Loader) -> None:
        module.__loader__ = loader  # the module as if this finder had never been there
        if module.__spec__ is not None:
            module.__spec__.loader = loader
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        self.then()


class _Then(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, done: Callable[[ModuleType, importlib.abc.Loader], None]) -> None:
        self.loader, self.done = loader, done

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.done(module, self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)
