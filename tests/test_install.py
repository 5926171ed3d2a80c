"""Tests for install.py: path detection, plug-in copy, config, uninstall, CLI errors.

Everything except the one `slow` test runs against fake homes and fake plug-in
trees in tmp dirs and never calls pip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_installer() -> ModuleType:
    # Loaded by path under a private name: "install" is too generic to put on sys.path.
    spec = importlib.util.spec_from_file_location("nr_install", REPO / "install.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["nr_install"] = module
    spec.loader.exec_module(module)
    return module


inst = _load_installer()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def plugin_src(tmp_path: Path) -> Path:
    """Minimal stand-in for gimp_plugin/ (entry folder + package + caches that must not be copied)."""
    src = tmp_path / "src" / "gimp_plugin"
    entry = src / "neural-restore"
    entry.mkdir(parents=True)
    (entry / "neural-restore.py").write_text("#!/usr/bin/env python3\nprint('plug-in')\n")
    os.chmod(entry / "neural-restore.py", 0o644)  # installer must set the exec bits itself
    (entry / "__pycache__").mkdir()
    (entry / "__pycache__" / "junk.pyc").write_bytes(b"x")
    pkg = src / "neural_restore"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "client.py").write_text("X = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "client.cpython-311.pyc").write_bytes(b"x")
    (pkg / "sub" / "__pycache__").mkdir()
    (pkg / "sub" / "__pycache__" / "x.pyc").write_bytes(b"x")
    return src


@pytest.fixture
def fake_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "engine").mkdir(parents=True)
    (repo / "engine" / "__init__.py").write_text("")
    (repo / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\n\n[project]\nname = "neural-restore-engine"\n'
        'version = "9.8.7"\nrequires-python = ">=3.9"\n'
    )
    return repo


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point HOME and the XDG vars at a tmp dir so nothing touches the real user dirs."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "APPDATA", "LOCALAPPDATA"):
        monkeypatch.delenv(var, raising=False)
    return home


def _install(plugins: Path, src: Path, repo: Path, tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    return inst.install_plugin(plugins, inst.venv_python(venv), venv=venv, source_dir=src,
                               repo_dir=repo, log_dir=tmp_path / "logs")


# --------------------------------------------------------------------------- platform paths


def test_default_venv_dir_per_platform(tmp_path: Path) -> None:
    home = tmp_path / "h"
    assert inst.default_venv_dir("linux", {}, home) == home / ".local/share/neural-restore/venv"
    assert inst.default_venv_dir("linux", {"XDG_DATA_HOME": "/xdg/data"}, home) == \
        Path("/xdg/data/neural-restore/venv")
    # A relative XDG value is invalid per the spec and ignored.
    assert inst.default_venv_dir("linux", {"XDG_DATA_HOME": "rel"}, home) == home / ".local/share/neural-restore/venv"
    assert inst.default_venv_dir("darwin", {"XDG_DATA_HOME": "/ignored"}, home) == \
        home / "Library/Application Support/neural-restore/venv"
    assert inst.default_venv_dir("win32", {"LOCALAPPDATA": str(tmp_path / "local")}, home) == \
        tmp_path / "local/neural-restore/venv"
    assert inst.default_venv_dir("win32", {}, home) == home / "AppData/Local/neural-restore/venv"


def test_default_log_dir_and_venv_python(tmp_path: Path) -> None:
    home = tmp_path / "h"
    assert inst.default_log_dir("linux", {}, home) == home / ".local/state/neural-restore"
    assert inst.default_log_dir("linux", {"XDG_STATE_HOME": "/st"}, home) == Path("/st/neural-restore")
    assert inst.default_log_dir("darwin", {}, home) == home / "Library/Logs/neural-restore"
    assert inst.default_log_dir("win32", {"LOCALAPPDATA": "/l"}, home) == Path("/l/neural-restore")
    assert inst.venv_python(Path("/v"), "linux") == Path("/v/bin/python")
    assert inst.venv_python(Path("/v"), "darwin") == Path("/v/bin/python")
    assert inst.venv_python(Path("/v"), "win32") == Path("/v/Scripts/python.exe")


def test_find_gimp_dirs_linux_none_gives_default(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    assert inst.find_gimp_plugin_dirs("linux", {}, home) == [home / ".config/GIMP/3.0/plug-ins"]
    assert not (home / ".config").exists()  # detection alone creates nothing


def test_find_gimp_dirs_linux_all_versions_and_flatpak(tmp_path: Path) -> None:
    home = tmp_path / "h"
    cfg = tmp_path / "xdgcfg"
    for version in ("3.2", "3.0", "2.10", "3.x", "30.0"):
        (cfg / "GIMP" / version).mkdir(parents=True)
    (cfg / "GIMP" / "3.4").write_text("a file, not a config dir")
    (home / ".config/GIMP/3.0").mkdir(parents=True)  # ignored: XDG_CONFIG_HOME wins
    flat = home / ".var/app/org.gimp.GIMP/config/GIMP/3.0"
    flat.mkdir(parents=True)
    found = inst.find_gimp_plugin_dirs("linux", {"XDG_CONFIG_HOME": str(cfg)}, home)
    assert found == [cfg / "GIMP/3.0/plug-ins", cfg / "GIMP/3.2/plug-ins", flat / "plug-ins"]
    assert inst.is_flatpak_dir(found[2]) and not inst.is_flatpak_dir(found[0])


def test_find_gimp_dirs_flatpak_only(tmp_path: Path) -> None:
    home = tmp_path / "h"
    flat = home / ".var/app/org.gimp.GIMP/config/GIMP/3.0"
    flat.mkdir(parents=True)
    assert inst.find_gimp_plugin_dirs("linux", {}, home) == [flat / "plug-ins"]


def test_find_gimp_dirs_macos(tmp_path: Path) -> None:
    home = tmp_path / "h"
    base = home / "Library/Application Support/GIMP"
    assert inst.find_gimp_plugin_dirs("darwin", {}, home) == [base / "3.0/plug-ins"]
    (base / "3.2").mkdir(parents=True)
    (base / "2.10").mkdir(parents=True)
    assert inst.find_gimp_plugin_dirs("darwin", {}, home) == [base / "3.2/plug-ins"]


def test_find_gimp_dirs_windows(tmp_path: Path) -> None:
    home = tmp_path / "h"
    appdata = tmp_path / "Roaming"
    env = {"APPDATA": str(appdata)}
    assert inst.find_gimp_plugin_dirs("win32", env, home) == [appdata / "GIMP/3.0/plug-ins"]
    (appdata / "GIMP/3.0").mkdir(parents=True)
    (appdata / "GIMP/3.10").mkdir(parents=True)
    (appdata / "GIMP/3.2").mkdir(parents=True)
    # numeric, not string, order: 3.10 after 3.2
    assert inst.find_gimp_plugin_dirs("win32", env, home) == [
        appdata / "GIMP/3.0/plug-ins", appdata / "GIMP/3.2/plug-ins", appdata / "GIMP/3.10/plug-ins"]
    assert inst.find_gimp_plugin_dirs("win32", {}, home) == [home / "AppData/Roaming/GIMP/3.0/plug-ins"]


# --------------------------------------------------------------------------- metadata / versions


def test_read_project_metadata_real_repo() -> None:
    meta = inst.read_project_metadata(REPO)
    assert meta["version"] and meta["requires-python"]


def test_read_project_metadata_fallback_parser(fake_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Python 3.9/3.10 have no tomllib: the line parser must give the same answer.
    monkeypatch.setitem(sys.modules, "tomllib", None)
    assert inst.read_project_metadata(fake_repo) == {"version": "9.8.7", "requires-python": ">=3.9"}


def test_python_version_checks() -> None:
    assert inst.python_satisfies((3, 11, 7), ">=3.10")
    assert not inst.python_satisfies((3, 9, 18), ">=3.10")
    assert inst.python_satisfies((3, 12), ">=3.10,<4")
    assert not inst.python_satisfies((4, 0), ">=3.10,<4")
    with pytest.raises(inst.InstallError, match="too old"):
        inst.check_installer_python((3, 8))
    inst.check_installer_python((3, 9))
    with pytest.raises(inst.InstallError, match=r"too old for the engine.*--python"):
        inst.check_engine_python((3, 9, 1), ">=3.10", "/usr/bin/python3.9")


def test_venv_error_message_mentions_python3_venv() -> None:
    out = ("The virtual environment was not created successfully because ensurepip is not\n"
           "available.  On Debian/Ubuntu systems, you need to install the python3-venv package\n")
    msg = inst.venv_error_message(Path("/x/venv"), out)
    assert "python3-venv" in msg and "\n" not in msg
    assert inst.venv_error_message(Path("/x"), "boom\nlast line\n").endswith(": last line")


# --------------------------------------------------------------------------- plug-in copy


def test_install_plugin_layout_and_config(plugin_src: Path, fake_repo: Path, tmp_path: Path) -> None:
    plugins = tmp_path / "cfg/GIMP/3.0/plug-ins"  # does not exist yet: must be created
    target = _install(plugins, plugin_src, fake_repo, tmp_path)
    assert target == plugins / "neural-restore"
    entry = target / "neural-restore.py"
    assert entry.is_file() and stat.S_IMODE(entry.stat().st_mode) == 0o755
    assert (target / "neural_restore/__init__.py").is_file()
    assert (target / "neural_restore/client.py").read_text() == "X = 1\n"
    assert (target / "neural_restore/sub/__init__.py").is_file()
    assert not list(target.rglob("__pycache__")) and not list(target.rglob("*.pyc"))
    assert stat.S_IMODE(target.stat().st_mode) & 0o555 == 0o555  # GIMP (any user) can enter it
    assert [p.name for p in plugins.iterdir()] == ["neural-restore"]  # no staging leftovers

    config = json.loads((target / "engine.json").read_text())
    assert config == {
        "engine_python": str(tmp_path / "venv/bin/python"),
        "engine_module": "engine",
        "venv": str(tmp_path / "venv"),
        "version": "9.8.7",
        "installed_from": str(fake_repo),
        "log_dir": str(tmp_path / "logs"),
    }
    for key in ("engine_python", "venv", "installed_from", "log_dir"):
        assert os.path.isabs(config[key])


def test_config_paths_absolute_from_relative_input(plugin_src: Path, fake_repo: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    target = inst.install_plugin(Path("rel/plug-ins"), Path("v/bin/python"), source_dir=plugin_src,
                                 repo_dir=fake_repo, log_dir=Path("logs"))
    config = json.loads((target / "engine.json").read_text())
    assert config["engine_python"] == str(tmp_path / "v/bin/python")
    assert config["venv"] == str(tmp_path / "v")  # derived from the python path
    assert config["log_dir"] == str(tmp_path / "logs")
    assert target == tmp_path / "rel/plug-ins/neural-restore"


def test_config_keeps_venv_symlink_path(tmp_path: Path) -> None:
    # resolve() would follow bin/python out of the venv to the base interpreter.
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin/python")
    config = inst.build_config(venv, venv / "bin/python", "1", tmp_path, tmp_path / "l")
    assert config["engine_python"] == str(venv / "bin/python")


def test_reinstall_is_idempotent_and_replaces_old_copy(plugin_src: Path, fake_repo: Path, tmp_path: Path) -> None:
    plugins = tmp_path / "plug-ins"
    target = _install(plugins, plugin_src, fake_repo, tmp_path)
    (target / "stale_from_old_version.py").write_text("")
    (target / "neural_restore/removed_module.py").write_text("")
    (plugin_src / "neural_restore/client.py").write_text("X = 2\n")
    sibling = plugins / "other-plugin"
    sibling.mkdir()
    (sibling / "other-plugin.py").write_text("")

    before = json.loads((target / "engine.json").read_text())
    again = _install(plugins, plugin_src, fake_repo, tmp_path)
    assert again == target
    assert not (target / "stale_from_old_version.py").exists()
    assert not (target / "neural_restore/removed_module.py").exists()
    assert (target / "neural_restore/client.py").read_text() == "X = 2\n"
    assert json.loads((target / "engine.json").read_text()) == before
    assert sorted(p.name for p in plugins.iterdir()) == ["neural-restore", "other-plugin"]
    assert (sibling / "other-plugin.py").exists()


def test_reinstall_over_developer_symlink_keeps_its_target(plugin_src: Path, fake_repo: Path, tmp_path: Path) -> None:
    plugins = tmp_path / "plug-ins"
    plugins.mkdir()
    checkout = tmp_path / "checkout-plugin"
    checkout.mkdir()
    (checkout / "neural-restore.py").write_text("dev copy")
    os.symlink(checkout, plugins / "neural-restore")
    target = _install(plugins, plugin_src, fake_repo, tmp_path)
    assert not target.is_symlink() and (target / "engine.json").is_file()
    assert (checkout / "neural-restore.py").read_text() == "dev copy"


def test_install_marks_the_entry_script_new_so_gimp_rereads_the_procedures(
        plugin_src: Path, fake_repo: Path, tmp_path: Path) -> None:
    """GIMP keeps a plug-in's procedures (and their settings) until its entry script's mtime
    changes: an upgrade that changed only the package must still look new to it."""
    import time

    old = time.time() - 30 * 24 * 3600
    os.utime(plugin_src / "neural-restore" / "neural-restore.py", (old, old))
    before = time.time()
    target = _install(tmp_path / "plug-ins", plugin_src, fake_repo, tmp_path)
    assert (target / "neural-restore.py").stat().st_mtime >= before - 1


def test_install_plugin_missing_sources(tmp_path: Path, fake_repo: Path) -> None:
    with pytest.raises(inst.InstallError, match="plug-in sources incomplete"):
        _install(tmp_path / "plug-ins", tmp_path / "nope", fake_repo, tmp_path)


def test_install_plugin_unwritable_dir(plugin_src: Path, fake_repo: Path, tmp_path: Path) -> None:
    # We run as root, so chmod can't make a dir unwritable: put the target under a regular file.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(inst.InstallError, match="is not a directory"):
        _install(blocker / "plug-ins", plugin_src, fake_repo, tmp_path)


def test_write_config_roundtrip(tmp_path: Path) -> None:
    path = inst.write_config(tmp_path, {"a": "b"})
    assert json.loads(path.read_text()) == {"a": "b"}
    assert not (tmp_path / "engine.json.tmp").exists()


# --------------------------------------------------------------------------- uninstall


def _make_venv(path: Path) -> Path:
    (path / "bin").mkdir(parents=True)
    (path / "pyvenv.cfg").write_text("home = /usr/bin\n")
    return path


def test_uninstall_removes_only_ours(plugin_src: Path, fake_repo: Path, tmp_path: Path) -> None:
    plugins_a, plugins_b = tmp_path / "a/plug-ins", tmp_path / "b/plug-ins"
    venv = _make_venv(tmp_path / "venv")
    _install(plugins_a, plugin_src, fake_repo, tmp_path)
    _install(plugins_b, plugin_src, fake_repo, tmp_path)
    (plugins_a / "other-plugin").mkdir()
    (plugins_a / "keep.txt").write_text("")
    (venv.parent / "next-to-venv.txt").write_text("")

    removed = inst.uninstall([plugins_a, plugins_b, tmp_path / "missing/plug-ins"], venv)
    assert set(removed) == {plugins_a / "neural-restore", plugins_b / "neural-restore", venv}
    assert not venv.exists()
    assert sorted(p.name for p in plugins_a.iterdir()) == ["keep.txt", "other-plugin"]
    assert plugins_b.is_dir() and (venv.parent / "next-to-venv.txt").exists()
    assert inst.uninstall([plugins_a, plugins_b], venv) == []  # second run: nothing left


def test_uninstall_refuses_non_venv_and_foreign_folder(tmp_path: Path) -> None:
    not_a_venv = tmp_path / "data"
    not_a_venv.mkdir()
    (not_a_venv / "precious.txt").write_text("")
    plugins = tmp_path / "plug-ins"
    foreign = plugins / "neural-restore"
    foreign.mkdir(parents=True)
    (foreign / "something-else.txt").write_text("")
    assert inst.uninstall([plugins], not_a_venv) == []
    assert (not_a_venv / "precious.txt").exists() and (foreign / "something-else.txt").exists()


def test_uninstall_follows_recorded_venv(plugin_src: Path, fake_repo: Path, tmp_path: Path) -> None:
    # Installed with --venv elsewhere; a plain --uninstall still finds it via engine.json.
    plugins = tmp_path / "plug-ins"
    venv = _make_venv(tmp_path / "venv")
    _install(plugins, plugin_src, fake_repo, tmp_path)
    removed = inst.uninstall([plugins], tmp_path / "default-venv-that-does-not-exist")
    assert venv in removed and not venv.exists()


def test_uninstall_symlinked_plugin_keeps_target(tmp_path: Path) -> None:
    plugins = tmp_path / "plug-ins"
    plugins.mkdir()
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "neural-restore.py").write_text("")
    os.symlink(checkout, plugins / "neural-restore")
    assert inst.uninstall([plugins], None) == [plugins / "neural-restore"]
    assert (checkout / "neural-restore.py").exists()


# --------------------------------------------------------------------------- CLI


def test_args_gimp_dir_repeatable_and_no_gimp(tmp_path: Path, fake_home: Path) -> None:
    args = inst.parse_args(["--gimp-dir", str(tmp_path / "x"), "--gimp-dir", "rel", "--gimp-dir", str(tmp_path / "x")])
    assert inst.plugin_targets(args) == [tmp_path / "x", Path(os.path.abspath("rel"))]
    assert inst.plugin_targets(inst.parse_args(["--no-gimp"])) == []
    # default: detection against the (fake) home
    assert inst.plugin_targets(inst.parse_args([]), "linux", {}, fake_home) == \
        [fake_home / ".config/GIMP/3.0/plug-ins"]
    defaults = inst.parse_args([])
    assert defaults.torch == "torch==2.13.0" and defaults.torch_index_url is None
    assert not defaults.uninstall and not defaults.no_selfcheck and not defaults.verbose


def test_args_gimp_dir_conflicts_with_no_gimp(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        inst.main(["--gimp-dir", "/tmp/x", "--no-gimp"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_main_unwritable_gimp_dir_is_one_line_error(tmp_path: Path, fake_home: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    # Must fail in the preflight, before any venv/pip work.
    monkeypatch.setattr(inst, "ensure_venv", lambda *a, **k: pytest.fail("venv step reached"))
    rc = inst.main(["--venv", str(tmp_path / "venv"), "--gimp-dir", str(blocker / "plug-ins")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert str(blocker) in err


def test_main_unwritable_venv_is_one_line_error(tmp_path: Path, fake_home: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc = inst.main(["--venv", str(blocker / "venv"), "--no-gimp"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1


def test_main_refuses_foreign_nonempty_venv_dir(tmp_path: Path, fake_home: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    venv = tmp_path / "important"
    venv.mkdir()
    (venv / "data.txt").write_text("")
    rc = inst.main(["--venv", str(venv), "--no-gimp"])
    assert rc == 1 and "not a virtual environment" in capsys.readouterr().err
    assert (venv / "data.txt").exists()


class FakeTools:
    """Stands in for run_command: records commands, fakes pip/wheel/selfcheck results."""

    def __init__(self, fail_on: str = "") -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, cmd: Sequence[str], *, verbose: bool = False, cwd: object = None,
                 timeout: object = None) -> object:
        cmd = [str(c) for c in cmd]
        self.calls.append(cmd)
        joined = " ".join(cmd)
        if self.fail_on and self.fail_on in joined:
            lines = "\n".join(f"pip line {i}" for i in range(60))
            return inst.CommandResult(1, lines + "\nERROR: No matching distribution found for " + self.fail_on)
        if cmd[3:4] == ["wheel"]:
            out = Path(cmd[cmd.index("-w") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "neural_restore_engine-0.1.0-py3-none-any.whl").write_bytes(b"")
        if cmd[2:4] == ["engine", "selfcheck"]:
            return inst.CommandResult(0, "noise\nselfcheck: denoise 16x16 via protocol ok\n")
        return inst.CommandResult(0, "fine\n")

    def pip_installs(self) -> list[list[str]]:
        return [c for c in self.calls if c[2:4] == ["pip", "install"]]


@pytest.fixture
def fake_run(tmp_path: Path, fake_home: Path, plugin_src: Path,
             monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    venv = tmp_path / "venv"

    def fake_ensure_venv(path: Path, **_: object) -> object:
        _make_venv(path)
        return inst.venv_python(path), "created"

    tools = FakeTools()
    monkeypatch.setattr(inst, "ensure_venv", fake_ensure_venv)
    monkeypatch.setattr(inst, "run_command", tools)
    monkeypatch.setattr(inst, "has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(inst, "PLUGIN_SOURCE_DIR", plugin_src)
    return {"venv": venv, "tools": tools, "plugins": tmp_path / "plug-ins"}


def test_main_flow_commands_and_output(fake_run: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    venv, tools, plugins = fake_run["venv"], fake_run["tools"], fake_run["plugins"]
    assert isinstance(tools, FakeTools)
    rc = inst.main(["--venv", str(venv), "--gimp-dir", str(plugins),
                    "--torch-index-url", "https://download.pytorch.org/whl/cpu"])
    out = capsys.readouterr().out
    assert rc == 0, out
    installs = tools.pip_installs()
    # order: torch (with the index only there), onnxruntime (CPU: no GPU), engine deps, engine forced
    assert installs[0][-3:] == ["torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"]
    assert all("--index-url" not in c for c in installs[1:])
    assert installs[1][-1] == "onnxruntime"
    assert installs[2][-1].endswith(".whl[dip]") and "--no-deps" not in installs[2]
    assert installs[3][-4:-1] == ["--upgrade", "--force-reinstall", "--no-deps"]
    assert installs[3][-1].endswith(".whl")
    assert any(c[2:4] == ["engine", "selfcheck"] for c in tools.calls)
    assert (Path(str(plugins)) / "neural-restore/engine.json").is_file()
    assert "selfcheck: denoise 16x16 via protocol ok" in out
    assert "Filters \u25b8 Enhance \u25b8 Neural \u25b8 Denoise\u2026" in out
    assert str(venv) in out and str(Path(str(plugins)) / "neural-restore") in out


def test_main_gpu_picks_onnxruntime_gpu_and_no_selfcheck(fake_run: dict[str, object],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    tools = fake_run["tools"]
    assert isinstance(tools, FakeTools)
    monkeypatch.setattr(inst, "has_nvidia_gpu", lambda: True)
    rc = inst.main(["--venv", str(fake_run["venv"]), "--no-gimp", "--no-selfcheck"])
    assert rc == 0
    assert tools.pip_installs()[1][-1] == "onnxruntime-gpu"
    assert ["-y", "-q", "onnxruntime"] == [c for c in tools.calls if "uninstall" in c][0][-3:]
    assert not any("selfcheck" in c for c in tools.calls)
    assert not Path(str(fake_run["plugins"])).exists()


def test_main_pip_failure_shows_tail_and_one_error_line(fake_run: dict[str, object],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    tools = fake_run["tools"]
    assert isinstance(tools, FakeTools)
    tools.fail_on = "torch==9.9"
    rc = inst.main(["--venv", str(fake_run["venv"]), "--no-gimp", "--torch", "torch==9.9"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "No matching distribution found for torch==9.9" in err  # pip's tail
    assert "pip line 59" in err and "pip line 5\n" not in err  # only the tail
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "torch==9.9" in error_lines[0]


def test_main_selfcheck_failure(fake_run: dict[str, object], capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    tools = fake_run["tools"]
    assert isinstance(tools, FakeTools)
    real = tools.__call__

    def failing(cmd: Sequence[str], **kw: object) -> object:
        if "selfcheck" in [str(c) for c in cmd]:
            return inst.CommandResult(1, "Traceback...\nengine: selfcheck failed: model missing\n")
        return real(cmd, **kw)

    monkeypatch.setattr(inst, "run_command", failing)
    rc = inst.main(["--venv", str(fake_run["venv"]), "--no-gimp"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.strip() == "error: engine self-check failed (exit 1): engine: selfcheck failed: model missing"


def test_main_uninstall(fake_run: dict[str, object], plugin_src: Path, fake_repo: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    plugins = Path(str(fake_run["plugins"]))
    venv = _make_venv(Path(str(fake_run["venv"])))
    _install(plugins, plugin_src, fake_repo, tmp_path)
    rc = inst.main(["--uninstall", "--venv", str(venv), "--gimp-dir", str(plugins)])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"removed {plugins / 'neural-restore'}" in out and f"removed {venv}" in out
    assert plugins.is_dir() and not (plugins / "neural-restore").exists() and not venv.exists()
    assert inst.main(["--uninstall", "--venv", str(venv), "--gimp-dir", str(plugins)]) == 0
    assert "Nothing to remove." in capsys.readouterr().out


def test_ensure_venv_real_create_and_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Real `python -m venv`: created, then reused, then rebuilt when broken.  --without-pip
    # (+ the base's site-packages so `import pip` still works) keeps it to well under a second.
    real_run = inst.run_command

    def quick_venv(cmd: Sequence[str], **kw: object) -> object:
        cmd = list(cmd)
        if cmd[1:3] == ["-m", "venv"]:
            cmd[3:3] = ["--without-pip", "--system-site-packages"]
        return real_run(cmd, **kw)

    monkeypatch.setattr(inst, "run_command", quick_venv)
    venv = tmp_path / "venv"
    python, how = inst.ensure_venv(venv)
    assert how == "created" and python.exists() and (venv / "pyvenv.cfg").is_file()
    assert inst.ensure_venv(venv)[1] == "reused"
    python.unlink()  # e.g. the base interpreter was upgraded away
    assert inst.ensure_venv(venv)[1] == "recreated"
    assert inst.venv_is_healthy(venv)


def test_ensure_venv_failure_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_ensurepip(cmd: Sequence[str], **kw: object) -> object:
        venv = Path(list(cmd)[-1])
        venv.mkdir(parents=True)
        (venv / "pyvenv.cfg").write_text("")
        return inst.CommandResult(1, "Error: ... because ensurepip is not available ...\n")

    monkeypatch.setattr(inst, "run_command", no_ensurepip)
    with pytest.raises(inst.InstallError, match="python3-venv"):
        inst.ensure_venv(tmp_path / "venv")
    assert not (tmp_path / "venv").exists()


def test_installer_parses_on_python39() -> None:
    import ast

    ast.parse((REPO / "install.py").read_text(), feature_version=(3, 9))


# --------------------------------------------------------------------------- real run


@pytest.mark.slow
def test_real_full_install(tmp_path: Path) -> None:
    """The real thing into tmp dirs: venv, local torch wheel, onnxruntime, engine, plug-in, selfcheck."""
    venv, plugins = tmp_path / "venv", tmp_path / "plug-ins"
    env = dict(os.environ, HOME=str(tmp_path / "home"), XDG_STATE_HOME=str(tmp_path / "state"))
    cmd = [sys.executable, str(REPO / "install.py"), "--venv", str(venv), "--gimp-dir", str(plugins)]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    took = time.monotonic() - start
    print(f"real install took {took:.0f} s\n{proc.stdout}\n{proc.stderr}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("Restart GIMP")
    config = json.loads((plugins / "neural-restore/engine.json").read_text())
    python = Path(config["engine_python"])
    assert python == inst.venv_python(venv) and python.exists()
    # The engine is importable from the venv without the checkout on the path.
    check = subprocess.run([str(python), "-c", "import engine, torch, onnxruntime; print(engine.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert str(venv) in check.stdout
    assert not (REPO / "build").exists() or (REPO / "build").stat().st_mtime < start  # checkout untouched

    # Second run reuses the venv and lands code again (idempotent).
    again = subprocess.run(cmd + ["--no-selfcheck"], env=env, capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "reused" in again.stdout

    gone = subprocess.run(cmd + ["--uninstall"], env=env, capture_output=True, text=True, timeout=300)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert not venv.exists() and not (plugins / "neural-restore").exists() and plugins.is_dir()


def test_log_dir_matches_engine(fake_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # engine.json's log_dir and the engine's own default must agree, or logs split in two places.
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.delenv("NEURAL_RESTORE_LOG_DIR", raising=False)
    try:
        from engine import logs
    except Exception as exc:  # engine not importable here (deps missing): nothing to compare
        pytest.skip(f"engine not importable: {exc}")
    assert inst.default_log_dir() == logs.log_dir()


# --------------------------------------------------------------------------- GIMP 2.10 adapter


def _add_gimp2_entry(src: Path) -> Path:
    entry = src / "gimp2" / "neural_restore_gimp2.py"
    entry.parent.mkdir()
    entry.write_text("#!/usr/bin/env python2\nprint 'gimpfu'\n")
    os.chmod(entry, 0o644)
    return entry


def test_gimp2_install_is_flat_executable_and_has_its_config(plugin_src: Path, fake_repo: Path,
                                                            tmp_path: Path) -> None:
    _add_gimp2_entry(plugin_src)
    plugins = tmp_path / "cfg/GIMP/2.10/plug-ins"
    venv = tmp_path / "venv"
    for _ in range(2):  # a reinstall replaces everything in place
        entry = inst.install_gimp2_plugin(plugins, inst.venv_python(venv), venv=venv, source_dir=plugin_src,
                                          repo_dir=fake_repo, log_dir=tmp_path / "logs")
    assert entry == plugins / "neural_restore_gimp2.py"
    assert stat.S_IMODE(entry.stat().st_mode) == 0o755
    assert sorted(p.name for p in plugins.iterdir()) == ["engine.json", "neural_restore", "neural_restore_gimp2.py"]
    assert (plugins / "neural_restore/client.py").read_text() == "X = 1\n"
    assert not list(plugins.rglob("*.pyc"))
    # nothing in the package is executable: GIMP 2.10 would try to run it as a plug-in
    assert not any(p.stat().st_mode & 0o111 for p in (plugins / "neural_restore").rglob("*.py"))
    config = json.loads((plugins / "engine.json").read_text())
    assert config["engine_python"] == str(venv / "bin/python") and config["version"] == "9.8.7"


def test_gimp2_profiles_are_found_and_installed_by_default(fake_run: dict[str, object], fake_home: Path,
                                                           plugin_src: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    _add_gimp2_entry(plugin_src)
    (fake_home / ".config/GIMP/2.10").mkdir(parents=True)
    assert inst.find_gimp2_plugin_dirs("linux", {}, fake_home) == [fake_home / ".config/GIMP/2.10/plug-ins"]
    rc = inst.main(["--venv", str(fake_run["venv"]), "--no-selfcheck"])
    out = capsys.readouterr().out
    assert rc == 0
    gimp2 = fake_home / ".config/GIMP/2.10/plug-ins"
    assert (gimp2 / "neural_restore_gimp2.py").is_file() and "(GIMP 2.10" in out
    assert (fake_home / ".config/GIMP/3.0/plug-ins/neural-restore/neural-restore.py").is_file()
    # --uninstall takes the 2.10 files away too, and leaves other plug-ins alone
    (gimp2 / "someone-else.py").write_text("")
    assert inst.main(["--venv", str(fake_run["venv"]), "--uninstall"]) == 0
    assert sorted(p.name for p in gimp2.iterdir()) == ["someone-else.py"]


def test_gimp2_flag_without_a_profile_says_how(fake_run: dict[str, object], plugin_src: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc = inst.main(["--venv", str(fake_run["venv"]), "--gimp2", "--no-selfcheck"])
    err = capsys.readouterr().err
    assert rc == 1 and "no GIMP 2.10 profile found" in err and "--gimp2-dir" in err
    assert not Path(str(fake_run["venv"])).exists()  # refused before any work


def test_gimp2_dir_explicit_and_gimp_dir_alone_skips_2_10(tmp_path: Path, fake_home: Path) -> None:
    (fake_home / ".config/GIMP/2.10").mkdir(parents=True)
    args = inst.parse_args(["--gimp-dir", str(tmp_path / "g3")])
    assert inst.gimp2_targets(args) == []
    args = inst.parse_args(["--gimp2-dir", str(tmp_path / "g2")])
    assert inst.gimp2_targets(args) == [tmp_path / "g2"]
    assert inst.gimp2_targets(inst.parse_args(["--no-gimp", "--gimp2"])) == []


def test_unwritable_plugin_folder_on_a_read_only_mount_is_one_line(tmp_path: Path, fake_home: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # /proc refuses new files even to root, where os.access() says yes.
    rc = inst.main(["--venv", str(tmp_path / "venv"), "--gimp-dir", "/proc/neural-restore-test/plug-ins"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: cannot write to /proc") and err.count("\n") == 1
    assert not (tmp_path / "venv").exists()
