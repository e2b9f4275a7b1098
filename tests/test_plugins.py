"""Plugin manager: load order, validation, duplicates, broken plugins, allow-list."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from cstbatch.errors import OptionError, PluginError
from cstbatch.plugins import build_registry


def plugin(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text("from cstbatch.hookspecs import hookimpl\n" + textwrap.dedent(body))
    return path


GAUSS = """
@hookimpl
def register_denoisers(register):
    def smooth(data, gtab, options):
        return data * 1.0
    register("{name}", smooth, version="{version}", description="test denoiser")
"""


def test_builtins_and_local_plugin_register_through_the_same_hooks(tmp_path):
    path = plugin(tmp_path / "plugins", "labsmooth", GAUSS.format(name="labsmooth", version="2.1"))
    registry = build_registry(tmp_path / "plugins")
    impl = registry.get("denoise", "labsmooth")
    assert impl.version == "2.1" and impl.source == f"local file {path}"
    assert registry.get("denoise", "patch2self").source == "built-in"
    assert {"denoise", "mask", "track", "atlas", "extract", "report"} <= set(registry.implementations)
    data = np.ones((2, 2, 2, 3), np.float32)
    assert impl.func(data, None, {}).shape == data.shape


def test_unknown_name_lists_known_ones(tmp_path):
    registry = build_registry(None)
    with pytest.raises(OptionError, match=r"unknown denoise implementation 'bm3d'; known: mppca, nlmeans, none, patch2self"):
        registry.get("denoise", "bm3d")


def test_duplicate_kind_and_name_names_both_sources(tmp_path):
    plugin(tmp_path / "plugins", "a_lab", GAUSS.format(name="patch2self", version="1"))
    with pytest.raises(PluginError, match=r"duplicate denoise implementation 'patch2self': registered by built-in and by local file .*a_lab.py"):
        build_registry(tmp_path / "plugins")


def test_misspelt_hook_is_an_error_naming_the_plugin(tmp_path):
    plugin(tmp_path / "plugins", "typo", """
    @hookimpl
    def register_denoiser(register):
        pass
    """)
    with pytest.raises(PluginError, match=r"plugin typo \(local file .*typo.py\): .*register_denoiser.*known hooks: .*register_denoisers"):
        build_registry(tmp_path / "plugins")


def test_misspelt_argument_is_an_error_naming_the_plugin(tmp_path):
    plugin(tmp_path / "plugins", "badarg", """
    @hookimpl
    def register_denoisers(registr):
        pass
    """)
    with pytest.raises(PluginError, match=r"plugin badarg .*registr"):
        build_registry(tmp_path / "plugins")


def test_plugin_that_fails_to_import_is_reported_and_skipped(tmp_path):
    plugin(tmp_path / "plugins", "broken", "import not_a_module_anywhere\n")
    plugin(tmp_path / "plugins", "fine", GAUSS.format(name="fine", version="1"))
    registry = build_registry(tmp_path / "plugins")
    assert "fine" in registry.names("denoise")
    assert any("plugin broken" in p and "failed to import" in p and "not_a_module_anywhere" in p
               for p in registry.problems)


def test_allow_list_environment_variable(tmp_path, monkeypatch):
    plugin(tmp_path / "plugins", "one", GAUSS.format(name="one", version="1"))
    plugin(tmp_path / "plugins", "two", GAUSS.format(name="two", version="1"))
    monkeypatch.setenv("CSTBATCH_PLUGINS", "two")
    names = build_registry(tmp_path / "plugins").names("denoise")
    assert "two" in names and "one" not in names and "patch2self" in names   # built-ins always load
    monkeypatch.setenv("CSTBATCH_PLUGINS", "")
    assert "two" not in build_registry(tmp_path / "plugins").names("denoise")


def test_cli_plugins_lists_kind_name_version_source(capsys):
    from cstbatch.cli import main
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "denoise   patch2self" in out and "built-in" in out
    # one column for the versions, however long a name (csd_deterministic_ptt is 21 characters)
    rows = [line for line in out.splitlines() if line.split()[-1] == "built-in"]
    assert len({line.index(" built-in") for line in rows}) == 1, rows
