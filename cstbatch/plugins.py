"""Plugin manager: one deterministic load order, validation at start-up, a named registry.

Load order: built-ins (``cstbatch.steps.builtin``), then installed entry points of the group
``cstbatch`` (sorted by name), then ``*.py`` files of the project's local ``plugins/`` folder
(sorted). ``CSTBATCH_PLUGINS`` (comma-separated names; empty = none) restricts which
entry-point and local plugins load — built-ins always load. A plugin that fails to import, or
whose hook raises, is reported and skipped; a misspelt hook or argument name, or two
implementations with the same kind and name, are errors naming the plugin(s).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import pluggy

from cstbatch import hookspecs
from cstbatch.errors import OptionError, PluginError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "cstbatch"
ALLOW_ENV = "CSTBATCH_PLUGINS"
PLUGINS_DIR_ENV = "CSTBATCH_PLUGINS_DIR"


@dataclass(frozen=True)
class Implementation:
    """A named implementation of one step kind, as registered by a plugin."""

    kind: str
    name: str
    func: Callable[..., Any]
    version: str
    description: str
    source: str  # "built-in", "entry point NAME (DIST VERSION)", "local file PATH"


@dataclass
class Registry:
    implementations: dict[str, dict[str, Implementation]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # plugins reported and skipped

    def get(self, kind: str, name: str) -> Implementation:
        known = self.implementations.get(kind, {})
        if name not in known:
            raise OptionError(f"unknown {kind} implementation {name!r}; known: {', '.join(sorted(known)) or 'none'}")
        return known[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.implementations.get(kind, {}))

    def all(self) -> list[Implementation]:
        return [impl for kind in sorted(self.implementations)
                for _, impl in sorted(self.implementations[kind].items())]


def _allowed() -> set[str] | None:
    value = os.environ.get(ALLOW_ENV)
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


def default_plugins_dir() -> Path:
    env = os.environ.get(PLUGINS_DIR_ENV)
    return Path(env) if env else Path.cwd() / "plugins"


def _load_local(path: Path):
    name = f"cstbatch_local_plugins.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _candidates(plugins_dir: Path | None):
    """(plugin name, source description, loader) in the documented order."""
    from cstbatch.steps import builtin
    yield "builtin", "built-in", lambda: builtin
    allowed = _allowed()
    eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    for ep in eps:
        if allowed is None or ep.name in allowed:
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
            yield ep.name, f"entry point {ep.name} ({dist})", ep.load
    if plugins_dir is not None and plugins_dir.is_dir():
        for path in sorted(plugins_dir.glob("*.py")):
            if path.name.startswith("_") or (allowed is not None and path.stem not in allowed):
                continue
            yield path.stem, f"local file {path}", (lambda p=path: _load_local(p))


def build_registry(plugins_dir: Path | None = None) -> Registry:
    """Load every plugin and collect its registrations (see module docstring for the rules)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    sources: dict[str, str] = {}
    for name, source, load in _candidates(plugins_dir):
        try:
            module = load()
        except Exception as exc:  # a broken plugin must not take the tool down
            registry.problems.append(f"plugin {name} ({source}) failed to import: {type(exc).__name__}: {exc}")
            log.warning(registry.problems[-1])
            continue
        try:
            pm.register(module, name=name)
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name} ({source}): {_validation_message(exc)}") from None
        except ValueError as exc:  # name already registered
            raise PluginError(f"plugin {name} ({source}): {exc}") from None
        sources[name] = source
    for kind, hook_name in hookspecs.KIND_HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():  # registration order
            source = sources[impl.plugin_name]
            register = _registrar(registry, kind, source)
            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:
                registry.problems.append(f"plugin {impl.plugin_name} ({source}) failed in {hook_name}: "
                                         f"{type(exc).__name__}: {exc}")
                log.warning(registry.problems[-1])
    return registry


def _validation_message(exc: pluggy.PluginValidationError) -> str:
    text = " ".join(str(exc).split())
    if "unknown hook" in text:
        known = ", ".join(sorted(hookspecs.KIND_HOOKS.values()))
        return f"{text} (known hooks: {known})"
    return text


def _registrar(registry: Registry, kind: str, source: str):
    def register(name: str, func: Callable[..., Any], version: str = "0", description: str = "") -> None:
        if not isinstance(name, str) or not name or not callable(func):
            raise PluginError(f"{source}: register() for {kind} needs a name and a callable")
        table = registry.implementations.setdefault(kind, {})
        if name in table:
            raise PluginError(f"duplicate {kind} implementation {name!r}: registered by "
                              f"{table[name].source} and by {source}")
        table[name] = Implementation(kind, name, func, str(version), description or (func.__doc__ or "").strip().split("\n")[0], source)
    return register


@lru_cache(maxsize=4)
def _cached(plugins_dir: str | None, allow: str | None) -> Registry:
    return build_registry(Path(plugins_dir) if plugins_dir else None)


def get_registry(plugins_dir: Path | None = None) -> Registry:
    """The process-wide registry (built once per plugins folder and allow-list)."""
    folder = plugins_dir if plugins_dir is not None else default_plugins_dir()
    return _cached(str(Path(folder).resolve()), os.environ.get(ALLOW_ENV))
