#!/usr/bin/env python3
"""Install Neural Restore: the engine's virtual environment and the GIMP 3 plug-in.

    python3 install.py                 # venv + torch + onnxruntime + engine, plug-in into every GIMP 3.x
    python3 install.py --no-gimp       # engine only
    python3 install.py --uninstall     # remove the plug-in folder(s) and the venv

Users without an NVIDIA GPU should pass PyTorch's CPU wheel index, otherwise pip
downloads the CUDA build of torch (several GB):

    python3 install.py --torch-index-url https://download.pytorch.org/whl/cpu

Stdlib only and runnable on Python >= 3.9, because it has to work before anything
is installed.  The engine itself needs the Python version named by pyproject.toml's
``requires-python``; use ``--python`` to build the venv from another interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

MIN_INSTALLER_PYTHON: tuple[int, int] = (3, 9)
APP_NAME = "neural-restore"
PLUGIN_NAME = "neural-restore"  # GIMP 3 wants <plug-ins>/<name>/<name>.py
PLUGIN_PACKAGE = "neural_restore"
ENGINE_MODULE = "engine"
ENGINE_DIST = "neural-restore-engine"
DEFAULT_TORCH = "torch==2.13.0"
CONFIG_NAME = "engine.json"
FLATPAK_ID = "org.gimp.GIMP"
MENU_HINT = ("Restart GIMP, then Filters \u25b8 Enhance \u25b8 Neural \u25b8 Denoise\u2026 / Inpaint Selection\u2026 / "
             "Remove JPEG Artifacts\u2026 / Upscale\u2026 / Sharpen\u2026 / Decompose into Layers\u2026")

REPO_DIR = Path(__file__).resolve().parent
PLUGIN_SOURCE_DIR = REPO_DIR / "gimp_plugin"
# What the engine wheel is built from: copied to a scratch dir so setuptools'
# build/ and *.egg-info never land in the checkout.
ENGINE_SOURCE_ITEMS = ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in", ENGINE_MODULE)
ENGINE_SOURCE_GLOBS = ("README*", "LICENSE*", "COPYING*")
COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
PIP_TAIL_LINES = 25
SELFCHECK_TIMEOUT_S = 600


class InstallError(Exception):
    """A failure the user can act on; main() prints it as one line, no traceback."""


@dataclass
class CommandResult:
    returncode: int
    output: str  # stdout+stderr; empty when the output was streamed to the terminal


# --------------------------------------------------------------------------- output


def say(message: str = "", *, err: bool = False) -> None:
    """print() that survives consoles whose encoding lacks the menu arrows (cp1252 pipes on Windows)."""
    stream = sys.stderr if err else sys.stdout
    try:
        print(message, file=stream, flush=True)
    except UnicodeEncodeError:
        plain = message.replace("\u25b8", ">").replace("\u2026", "...")
        print(plain.encode("ascii", "replace").decode("ascii"), file=stream, flush=True)


def tail(text: str, lines: int = PIP_TAIL_LINES) -> str:
    kept = [line for line in text.rstrip().splitlines()][-lines:]
    return "\n".join("    " + line for line in kept)


# --------------------------------------------------------------------------- platform paths


def normalize_platform(platform: Optional[str] = None) -> str:
    """Map sys.platform values to 'linux' | 'darwin' | 'win32' (other Unixes follow XDG like Linux)."""
    name = sys.platform if platform is None else platform
    if name.startswith("win") or name == "cygwin":
        return "win32"
    if name == "darwin":
        return "darwin"
    return "linux"


def _env_home(env: Optional[Mapping[str, str]], home: Optional[Path]) -> tuple[Mapping[str, str], Path]:
    return (os.environ if env is None else env), (Path.home() if home is None else Path(home))


def _env_dir(env: Mapping[str, str], key: str, fallback: Path) -> Path:
    # XDG says relative values are invalid and must be ignored.
    value = env.get(key, "")
    return Path(value) if value and os.path.isabs(value) else fallback


def user_data_dir(platform: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
                  home: Optional[Path] = None) -> Path:
    """Per-user data folder for neural-restore (not created)."""
    plat = normalize_platform(platform)
    env, home = _env_home(env, home)
    if plat == "win32":
        return _env_dir(env, "LOCALAPPDATA", home / "AppData" / "Local") / APP_NAME
    if plat == "darwin":
        return home / "Library" / "Application Support" / APP_NAME
    return _env_dir(env, "XDG_DATA_HOME", home / ".local" / "share") / APP_NAME


def default_venv_dir(platform: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
                     home: Optional[Path] = None) -> Path:
    return user_data_dir(platform, env, home) / "venv"


def default_log_dir(platform: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
                    home: Optional[Path] = None) -> Path:
    """Where the plug-in/engine keep logs; must match engine/logs.py's log_dir() default."""
    plat = normalize_platform(platform)
    env, home = _env_home(env, home)
    if plat == "win32":
        return _env_dir(env, "LOCALAPPDATA", home / "AppData" / "Local") / APP_NAME
    if plat == "darwin":
        return home / "Library" / "Logs" / APP_NAME
    return _env_dir(env, "XDG_STATE_HOME", home / ".local" / "state") / APP_NAME


def venv_python(venv: Path, platform: Optional[str] = None) -> Path:
    if normalize_platform(platform) == "win32":
        return Path(venv) / "Scripts" / "python.exe"
    return Path(venv) / "bin" / "python"


def gimp_config_roots(platform: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
                      home: Optional[Path] = None) -> list[Path]:
    """Folders that hold GIMP's per-version config dirs ('3.0', '3.2', ...); the first is the native default."""
    plat = normalize_platform(platform)
    env, home = _env_home(env, home)
    if plat == "win32":
        return [_env_dir(env, "APPDATA", home / "AppData" / "Roaming") / "GIMP"]
    if plat == "darwin":
        return [home / "Library" / "Application Support" / "GIMP"]
    return [
        _env_dir(env, "XDG_CONFIG_HOME", home / ".config") / "GIMP",
        # Flatpak keeps its own XDG_CONFIG_HOME under ~/.var/app/<id>/config.
        home / ".var" / "app" / FLATPAK_ID / "config" / "GIMP",
    ]


_GIMP3_DIR = re.compile(r"^3\.(\d+)$")


def find_gimp_plugin_dirs(platform: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
                          home: Optional[Path] = None) -> list[Path]:
    """plug-ins folder of every existing GIMP 3.x config dir; if none exists, the native 3.0 default.

    The default is returned even though it does not exist yet (install creates it),
    so a user who never started GIMP still ends up with a working plug-in.
    """
    found: list[Path] = []
    roots = gimp_config_roots(platform, env, home)
    for root in roots:
        if not root.is_dir():
            continue
        versions = []
        for child in root.iterdir():
            match = _GIMP3_DIR.match(child.name)
            if match and child.is_dir():
                versions.append((int(match.group(1)), child))
        found.extend(child / "plug-ins" for _, child in sorted(versions))
    if not found:
        found.append(roots[0] / "3.0" / "plug-ins")
    return found


GIMP2_VERSION = "2.10"
GIMP2_ENTRY = "neural_restore_gimp2.py"  # gimp_plugin/gimp2/<this>, copied flat into plug-ins/


def find_gimp2_plugin_dirs(platform: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
                           home: Optional[Path] = None) -> list[Path]:
    """plug-ins folder of every existing GIMP 2.10 profile (none is created: 2.10 is opt-in)."""
    found = []
    for root in gimp_config_roots(platform, env, home):
        profile = root / GIMP2_VERSION
        if profile.is_dir():
            found.append(profile / "plug-ins")
    return found


def install_gimp2_plugin(plugins_dir: Path, engine_python: Path, *, venv: Optional[Path] = None,
                         source_dir: Optional[Path] = None, repo_dir: Optional[Path] = None,
                         log_dir: Optional[Path] = None, version: Optional[str] = None) -> Path:
    """Copy the GIMP 2.10 (gimpfu) entry, the neural_restore package and engine.json into
    <plugins_dir>, flat, as GIMP 2.10 expects; returns the entry script's path.

    The package is swapped in through a staging folder like the GIMP 3 install; the entry
    and engine.json are replaced atomically. The package's files are not executable, so
    GIMP 2.10 never mistakes them for plug-ins.
    """
    source_dir = Path(source_dir) if source_dir is not None else PLUGIN_SOURCE_DIR
    repo_dir = Path(repo_dir) if repo_dir is not None else REPO_DIR
    plugins_dir = Path(os.path.abspath(plugins_dir))
    entry_source = source_dir / "gimp2" / GIMP2_ENTRY
    for needed in (entry_source, source_dir / PLUGIN_PACKAGE):
        if not needed.exists():
            raise InstallError(f"plug-in sources incomplete: {needed} is missing")
    ensure_writable_dir(plugins_dir)
    venv = Path(venv) if venv is not None else Path(os.path.abspath(engine_python)).parent.parent
    version = version if version is not None else read_project_metadata(repo_dir)["version"]
    log_dir = Path(log_dir) if log_dir is not None else default_log_dir()
    plugins_dir.mkdir(parents=True, exist_ok=True)

    package = plugins_dir / PLUGIN_PACKAGE
    staging = Path(tempfile.mkdtemp(prefix=f".{PLUGIN_PACKAGE}.new-", dir=plugins_dir))
    try:
        shutil.copytree(source_dir / PLUGIN_PACKAGE, staging, ignore=COPY_IGNORE, dirs_exist_ok=True)
        os.chmod(staging, 0o755)
        if package.is_symlink() or package.exists():
            _remove_path(package)
        os.replace(staging, package)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    entry = plugins_dir / GIMP2_ENTRY
    tmp = entry.with_name(GIMP2_ENTRY + ".tmp")
    shutil.copyfile(entry_source, tmp)
    os.chmod(tmp, 0o755)  # GIMP 2.10 runs only executable files in plug-ins/
    os.replace(tmp, entry)
    write_config(plugins_dir, build_config(venv, engine_python, version, repo_dir, log_dir))
    return entry


def uninstall_gimp2(plugins_dirs: Sequence[Path]) -> list[Path]:
    """Remove what install_gimp2_plugin put into each folder (only when our entry is there)."""
    removed: list[Path] = []
    for plugins_dir in plugins_dirs:
        entry = Path(os.path.abspath(plugins_dir)) / GIMP2_ENTRY
        if not entry.is_file():
            continue
        for path in (entry, entry.parent / PLUGIN_PACKAGE, entry.parent / CONFIG_NAME):
            if path.exists() or path.is_symlink():
                _remove_path(path)
                removed.append(path)
    return removed


def is_flatpak_dir(plugins_dir: Path) -> bool:
    parts = Path(plugins_dir).parts
    return any(parts[i:i + 3] == (".var", "app", FLATPAK_ID) for i in range(len(parts)))


# --------------------------------------------------------------------------- metadata


def read_project_metadata(repo_dir: Optional[Path] = None) -> dict[str, str]:
    """version and requires-python from pyproject.toml (tomllib is 3.11+, so fall back to a tiny parser)."""
    path = Path(repo_dir if repo_dir is not None else REPO_DIR) / "pyproject.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror or exc}") from None
    project: dict[str, object] = {}
    try:
        import tomllib

        project = dict(tomllib.loads(text).get("project", {}))
    except ImportError:
        section = ""
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("["):
                section = line.strip("[] ")
            elif section == "project":
                match = re.match(r'^([A-Za-z0-9_-]+)\s*=\s*"([^"]*)"', line)
                if match:
                    project[match.group(1)] = match.group(2)
    except ValueError as exc:  # tomllib.TOMLDecodeError subclasses ValueError
        raise InstallError(f"cannot parse {path}: {exc}") from None
    version = str(project.get("version", "") or "")
    if not version:
        raise InstallError(f"{path} has no [project] version")
    return {"version": version, "requires-python": str(project.get("requires-python", "") or "")}


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def python_satisfies(version: tuple[int, ...], requires: str) -> bool:
    """Enough of PEP 440 for requires-python ('>=3.10', '>=3.10,<4'); unknown operators are ignored."""
    for clause in filter(None, (c.strip() for c in requires.split(","))):
        match = re.match(r"^(>=|<=|>|<|==|!=)\s*([\d.]+)", clause)
        if not match:
            continue
        op, bound = match.group(1), _version_tuple(match.group(2))
        have = tuple(version[: len(bound)])
        ok = {
            ">=": have >= bound, ">": have > bound, "<=": have <= bound,
            "<": have < bound, "==": have == bound, "!=": have != bound,
        }[op]
        if not ok:
            return False
    return True


def check_installer_python(version: tuple[int, ...] = tuple(sys.version_info[:2])) -> None:
    if tuple(version[:2]) < MIN_INSTALLER_PYTHON:
        need = ".".join(map(str, MIN_INSTALLER_PYTHON))
        have = ".".join(map(str, version[:2]))
        raise InstallError(f"Python {have} is too old to run install.py; need {need} or newer")


def interpreter_version(python: str) -> tuple[int, ...]:
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        return tuple(sys.version_info[:3])
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('.'.join(map(str, sys.version_info[:3])))"],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"cannot run Python interpreter {python}: {exc}") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
        raise InstallError(f"cannot run Python interpreter {python}: {last}")
    return _version_tuple(out.stdout)


def check_engine_python(version: tuple[int, ...], requires: str, python: str) -> None:
    if requires and not python_satisfies(version, requires):
        shown = ".".join(map(str, version[:3]))
        raise InstallError(
            f"Python {shown} ({python}) is too old for the engine (needs {requires}); "
            f"rerun with --python /path/to/a/newer/python3"
        )


# --------------------------------------------------------------------------- subprocesses


def child_env() -> dict[str, str]:
    """Environment for venv tools: no PYTHONPATH/PYTHONHOME leaking in (they'd shadow the venv)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def run_command(cmd: Sequence[str], *, verbose: bool = False, cwd: Optional[Path] = None,
                timeout: Optional[float] = None) -> CommandResult:
    """Run a tool; stream its output with --verbose, else capture it for the failure tail."""
    try:
        if verbose:
            streamed = subprocess.run(list(cmd), cwd=cwd, env=child_env(), timeout=timeout)
            return CommandResult(streamed.returncode, "")
        captured = subprocess.run(list(cmd), cwd=cwd, env=child_env(), timeout=timeout,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, encoding="utf-8", errors="replace")
        return CommandResult(captured.returncode, captured.stdout or "")
    except FileNotFoundError:
        return CommandResult(127, f"{cmd[0]}: not found")
    except subprocess.TimeoutExpired as exc:
        out = exc.output if isinstance(exc.output, str) else (exc.output or b"").decode("utf-8", "replace")
        return CommandResult(124, f"{out}\n(timed out after {timeout:.0f} s)")


def has_nvidia_gpu() -> bool:
    """`nvidia-smi -L` succeeding is the cheapest reliable sign of a usable NVIDIA driver."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and "GPU" in proc.stdout


# --------------------------------------------------------------------------- venv


def _looks_like_venv(path: Path) -> bool:
    return (Path(path) / "pyvenv.cfg").is_file()


def venv_is_healthy(venv: Path, platform: Optional[str] = None, requires_python: str = "") -> bool:
    """True when the venv's python starts, has pip, and is new enough (base interpreter may have vanished)."""
    python = venv_python(venv, platform)
    if not _looks_like_venv(venv) or not python.exists():
        return False
    try:
        proc = subprocess.run(
            [str(python), "-c", "import sys, pip; print('.'.join(map(str, sys.version_info[:3])))"],
            capture_output=True, text=True, timeout=120, env=child_env(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    if proc.returncode != 0:
        return False
    return python_satisfies(_version_tuple(proc.stdout), requires_python) if requires_python else True


def venv_error_message(venv: Path, output: str) -> str:
    if "ensurepip" in output:
        ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
        return (f"could not create the virtual environment at {venv}: ensurepip is missing "
                f"(on Debian/Ubuntu: sudo apt install python3-venv, or python{ver}-venv)")
    last = [line for line in output.strip().splitlines() if line.strip()][-1:]
    detail = f": {last[0].strip()}" if last else ""
    return f"could not create the virtual environment at {venv}{detail}"


def ensure_venv(venv: Path, *, python: str = sys.executable, platform: Optional[str] = None,
                requires_python: str = "", verbose: bool = False) -> tuple[Path, str]:
    """Reuse a healthy venv, recreate a broken one of ours, refuse to touch anything else.

    Returns (venv python, 'reused' | 'created' | 'recreated').
    """
    venv = Path(os.path.abspath(venv))
    how = "created"
    if venv.exists() or venv.is_symlink():
        if venv_is_healthy(venv, platform, requires_python):
            return venv_python(venv, platform), "reused"
        if venv.is_symlink() or not venv.is_dir():
            raise InstallError(f"{venv} exists and is not a directory; pass another --venv")
        if _looks_like_venv(venv):
            shutil.rmtree(venv)  # ours-looking but broken (e.g. base Python upgraded): rebuild
            how = "recreated"
        elif any(venv.iterdir()):
            raise InstallError(f"{venv} exists, is not empty and is not a virtual environment; pass another --venv")
    ensure_writable_dir(venv)
    # Always captured (it is short): the ensurepip hint needs the text even with --verbose.
    result = run_command([python, "-m", "venv", str(venv)], verbose=False)
    if verbose and result.output.strip():
        say(result.output.rstrip())
    if result.returncode != 0 or not venv_python(venv, platform).exists():
        if _looks_like_venv(venv):
            shutil.rmtree(venv, ignore_errors=True)  # a half-made venv would only be "broken" next run
        raise InstallError(venv_error_message(venv, result.output))
    return venv_python(venv, platform), how


# --------------------------------------------------------------------------- pip steps


def pip(python: Path, args: Sequence[str], *, what: str, verbose: bool = False) -> None:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    if not verbose:
        cmd += ["--progress-bar", "off"]
    result = run_command(cmd + list(args), verbose=verbose)
    if result.returncode != 0:
        detail = f"\n  pip output (last lines):\n{tail(result.output)}" if result.output.strip() else ""
        if detail:
            say(detail, err=True)
        raise InstallError(f"pip failed while installing {what} (exit {result.returncode})"
                           + ("" if verbose else "; rerun with --verbose for the full log"))


def install_torch(python: Path, spec: str = DEFAULT_TORCH, index_url: Optional[str] = None,
                  *, verbose: bool = False) -> None:
    args = [spec]
    if index_url:
        args += ["--index-url", index_url]  # this step only: the rest come from the normal index
    pip(python, args, what=spec, verbose=verbose)


def onnxruntime_package(choice: str = "auto", gpu: Optional[bool] = None) -> str:
    if choice == "gpu":
        return "onnxruntime-gpu"
    if choice == "cpu":
        return "onnxruntime"
    return "onnxruntime-gpu" if (has_nvidia_gpu() if gpu is None else gpu) else "onnxruntime"


def install_onnxruntime(python: Path, package: str, *, verbose: bool = False) -> None:
    # Both wheels provide the same 'onnxruntime' import package; having both breaks it.
    other = "onnxruntime" if package == "onnxruntime-gpu" else "onnxruntime-gpu"
    run_command([str(python), "-m", "pip", "uninstall", "-y", "-q", other], verbose=False)
    pip(python, [package], what=package, verbose=verbose)


def stage_engine_source(repo_dir: Path, dest: Path) -> Path:
    """Copy just what the wheel is built from, so the build never writes into the checkout."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ENGINE_SOURCE_ITEMS:
        src = repo_dir / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=COPY_IGNORE)
        elif src.is_file():
            shutil.copy2(src, dest / name)
    for pattern in ENGINE_SOURCE_GLOBS:
        for src in repo_dir.glob(pattern):
            if src.is_file():
                shutil.copy2(src, dest / src.name)
    return dest


def install_engine(python: Path, repo_dir: Optional[Path] = None, *, verbose: bool = False) -> None:
    """Build the engine wheel once, install its deps normally, then force the engine itself in.

    Non-editable so the installed plug-in never depends on the checkout; the
    --force-reinstall --no-deps pass makes code changes land even when the version is unchanged.
    """
    repo_dir = Path(repo_dir) if repo_dir is not None else REPO_DIR
    if not (repo_dir / "pyproject.toml").is_file() or not (repo_dir / ENGINE_MODULE).is_dir():
        raise InstallError(f"engine sources not found in {repo_dir}")
    with tempfile.TemporaryDirectory(prefix="neural-restore-build-") as tmp:
        src = stage_engine_source(repo_dir, Path(tmp) / "src")
        wheels = Path(tmp) / "wheels"
        cmd = [str(python), "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps"]
        cmd += [] if verbose else ["--progress-bar", "off"]
        result = run_command(cmd + ["-w", str(wheels), str(src)], verbose=verbose)
        built = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
        if result.returncode != 0 or not built:
            if result.output.strip():
                say(f"\n  pip output (last lines):\n{tail(result.output)}", err=True)
            raise InstallError(f"building the engine wheel from {repo_dir} failed"
                               + ("" if verbose else "; rerun with --verbose for the full log"))
        wheel = str(built[0])
        pip(python, [f"{wheel}[dip]"], what="the engine's dependencies", verbose=verbose)
        pip(python, ["--upgrade", "--force-reinstall", "--no-deps", wheel], what="the engine", verbose=verbose)


def run_selfcheck(python: Path, *, verbose: bool = False) -> str:
    """`python -m engine selfcheck`, run from a scratch dir so a checkout's engine/ can't shadow the installed one."""
    with tempfile.TemporaryDirectory(prefix="neural-restore-selfcheck-") as tmp:
        result = run_command([str(python), "-m", ENGINE_MODULE, "selfcheck"], cwd=Path(tmp),
                             timeout=SELFCHECK_TIMEOUT_S)
    lines = [line.strip() for line in result.output.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "(no output)"
    if result.returncode != 0:
        if verbose and len(lines) > 1:
            say(tail(result.output), err=True)
        raise InstallError(f"engine self-check failed (exit {result.returncode}): {last}")
    return last


# --------------------------------------------------------------------------- plug-in files


def ensure_writable_dir(path: Path) -> None:
    """Fail early (before minutes of pip) when `path` can't be created or written."""
    path = Path(os.path.abspath(path))
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InstallError(f"cannot write to {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InstallError(f"no write permission for {probe} (needed for {path})")
    # os.access says yes to root, and on read-only or special mounts: really write a file.
    try:
        handle, name = tempfile.mkstemp(prefix=".neural-restore-probe-", dir=probe)
        os.close(handle)
        os.unlink(name)
    except OSError as exc:
        raise InstallError(f"cannot write to {probe} (needed for {path}): {exc.strerror or exc}; "
                           "choose another folder or fix its permissions") from None


def check_plugin_source(source_dir: Path) -> None:
    entry = source_dir / PLUGIN_NAME / f"{PLUGIN_NAME}.py"
    package = source_dir / PLUGIN_PACKAGE
    for needed in (entry, package):
        if not needed.exists():
            raise InstallError(f"plug-in sources incomplete: {needed} is missing")


def _remove_path(path: Path) -> None:
    """Delete a file, a symlink (never its target) or a tree."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def build_config(venv: Path, engine_python: Path, version: str, repo_dir: Path, log_dir: Path) -> dict[str, str]:
    # abspath, not resolve(): resolving venv/bin/python follows the symlink out of the venv.
    return {
        "engine_python": os.path.abspath(engine_python),
        "engine_module": ENGINE_MODULE,
        "venv": os.path.abspath(venv),
        "version": version,
        "installed_from": os.path.abspath(repo_dir),
        "log_dir": os.path.abspath(log_dir),
    }


def write_config(plugin_dir: Path, config: Mapping[str, str]) -> Path:
    path = Path(plugin_dir) / CONFIG_NAME
    tmp = path.with_name(CONFIG_NAME + ".tmp")
    tmp.write_text(json.dumps(dict(config), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # the plug-in never sees a half-written file
    return path


def install_plugin(plugins_dir: Path, engine_python: Path, *, venv: Optional[Path] = None,
                   source_dir: Optional[Path] = None, repo_dir: Optional[Path] = None,
                   log_dir: Optional[Path] = None, version: Optional[str] = None) -> Path:
    """Copy the plug-in into <plugins_dir>/neural-restore/ and write its engine.json.

    Built in a hidden sibling folder and swapped in, so an older copy is replaced
    cleanly (no stale files) and GIMP never sees a half-copied plug-in.
    """
    # Defaults resolved at call time so tests (and callers) can repoint the module globals.
    source_dir = Path(source_dir) if source_dir is not None else PLUGIN_SOURCE_DIR
    repo_dir = Path(repo_dir) if repo_dir is not None else REPO_DIR
    plugins_dir = Path(os.path.abspath(plugins_dir))
    check_plugin_source(source_dir)
    ensure_writable_dir(plugins_dir)
    venv = Path(venv) if venv is not None else Path(os.path.abspath(engine_python)).parent.parent
    version = version if version is not None else read_project_metadata(repo_dir)["version"]
    log_dir = Path(log_dir) if log_dir is not None else default_log_dir()

    plugins_dir.mkdir(parents=True, exist_ok=True)
    target = plugins_dir / PLUGIN_NAME
    staging = Path(tempfile.mkdtemp(prefix=f".{PLUGIN_NAME}.new-", dir=plugins_dir))
    try:
        shutil.copytree(source_dir / PLUGIN_NAME, staging, ignore=COPY_IGNORE, dirs_exist_ok=True)
        shutil.copytree(source_dir / PLUGIN_PACKAGE, staging / PLUGIN_PACKAGE, ignore=COPY_IGNORE)
        # GIMP only runs plug-ins whose entry script is executable.
        os.chmod(staging / f"{PLUGIN_NAME}.py", 0o755)
        # GIMP re-reads a plug-in's procedures (their settings) only when the entry script's
        # mtime changes; copying keeps the source's, so an upgrade that changed only the
        # package would leave GIMP with the old settings list. Installing is a change: now.
        os.utime(staging / f"{PLUGIN_NAME}.py")
        os.chmod(staging, 0o755)  # mkdtemp makes it 0o700
        write_config(staging, build_config(venv, engine_python, version, repo_dir, log_dir))
        if target.is_symlink():
            target.unlink()  # a developer's symlink to a checkout: drop the link, never its target
        old: Optional[Path] = None
        if target.exists():
            old = plugins_dir / f".{PLUGIN_NAME}.old-{os.getpid()}"
            if old.exists() or old.is_symlink():
                _remove_path(old)
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            _remove_path(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- uninstall


def _is_our_plugin_dir(path: Path) -> bool:
    return path.is_symlink() or (path / CONFIG_NAME).is_file() or (path / f"{PLUGIN_NAME}.py").is_file()


def uninstall(plugins_dirs: Sequence[Path], venv: Optional[Path]) -> list[Path]:
    """Remove <plug-ins>/neural-restore from each dir and our venv(s); returns what was removed.

    Venvs named in the removed engine.json files go too (an install with --venv
    elsewhere is still ours), but only folders with a pyvenv.cfg are ever deleted.
    """
    removed: list[Path] = []
    venvs: list[Path] = [Path(os.path.abspath(venv))] if venv is not None else []
    for plugins_dir in plugins_dirs:
        target = Path(os.path.abspath(plugins_dir)) / PLUGIN_NAME
        if not (target.exists() or target.is_symlink()):
            continue
        if not _is_our_plugin_dir(target):
            say(f"  skipped {target}: does not look like a Neural Restore plug-in")
            continue
        config = target / CONFIG_NAME
        if not target.is_symlink() and config.is_file():
            try:
                data = json.loads(config.read_text(encoding="utf-8"))
                recorded = data.get("venv") if isinstance(data, dict) else None
                if isinstance(recorded, str) and os.path.isabs(recorded):
                    venvs.append(Path(recorded))
            except (OSError, ValueError):
                pass  # unreadable config: still remove the plug-in, just not a venv we can't name
        _remove_path(target)
        removed.append(target)
    seen = set()
    for candidate in venvs:
        key = os.path.normcase(os.path.abspath(candidate))
        if key in seen:
            continue
        seen.add(key)
        if candidate.is_dir() and not candidate.is_symlink() and _looks_like_venv(candidate):
            shutil.rmtree(candidate)
            removed.append(candidate)
        elif candidate.exists():
            say(f"  skipped {candidate}: not a virtual environment (no pyvenv.cfg)")
    return removed


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="install.py",
        description="Set up the Neural Restore engine venv and install the GIMP 3 plug-in.",
        epilog="Without an NVIDIA GPU, pass --torch-index-url https://download.pytorch.org/whl/cpu "
               "so pip takes the CPU build of torch instead of several GB of CUDA packages.",
    )
    parser.add_argument("--venv", type=Path, default=None,
                        help=f"engine virtual environment (default: {default_venv_dir()})")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter the venv is created from (default: this one)")
    parser.add_argument("--torch", default=DEFAULT_TORCH, metavar="SPEC",
                        help="pip requirement for torch (default: %(default)s)")
    parser.add_argument("--torch-index-url", default=None, metavar="URL",
                        help="package index for the torch step only, e.g. https://download.pytorch.org/whl/cpu")
    parser.add_argument("--onnxruntime", choices=("auto", "cpu", "gpu"), default="auto",
                        help="onnxruntime build: auto = onnxruntime-gpu if `nvidia-smi -L` works (default)")
    gimp = parser.add_mutually_exclusive_group()
    gimp.add_argument("--gimp-dir", action="append", type=Path, default=None, metavar="DIR",
                      help="GIMP plug-ins folder to install into (repeatable; default: every GIMP 3.x found)")
    gimp.add_argument("--no-gimp", action="store_true", help="install the engine only")
    parser.add_argument("--gimp2", action="store_true",
                        help="also install the GIMP 2.10 (Python-Fu) plug-in into every GIMP 2.10 "
                             "profile found (done anyway when a 2.10 profile exists and no "
                             "--gimp-dir is given)")
    parser.add_argument("--gimp2-dir", action="append", type=Path, default=None, metavar="DIR",
                        help="GIMP 2.10 plug-ins folder to install into (repeatable)")
    parser.add_argument("--no-selfcheck", action="store_true", help="skip the engine self-check job")
    parser.add_argument("--uninstall", action="store_true",
                        help="remove the plug-in folder(s) and the engine venv, nothing else")
    parser.add_argument("-v", "--verbose", action="store_true", help="stream pip's output")
    return parser.parse_args(argv)


def plugin_targets(args: argparse.Namespace, platform: Optional[str] = None,
                   env: Optional[Mapping[str, str]] = None, home: Optional[Path] = None) -> list[Path]:
    if args.no_gimp:
        return []
    if args.gimp_dir:
        dirs = [Path(os.path.abspath(os.path.expanduser(str(d)))) for d in args.gimp_dir]
    else:
        dirs = find_gimp_plugin_dirs(platform, env, home)
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def gimp2_targets(args: argparse.Namespace, platform: Optional[str] = None,
                  env: Optional[Mapping[str, str]] = None, home: Optional[Path] = None) -> list[Path]:
    """GIMP 2.10 plug-ins folders: --gimp2-dir, else the 2.10 profiles found when --gimp2 is
    given or when no --gimp-dir narrows the install (so a 2.10 user gets it by default)."""
    if args.no_gimp:
        return []
    if args.gimp2_dir:
        return [Path(os.path.abspath(os.path.expanduser(str(d)))) for d in args.gimp2_dir]
    if args.gimp2 or not args.gimp_dir:
        return find_gimp2_plugin_dirs(platform, env, home)
    return []


def run_uninstall(args: argparse.Namespace, venv: Path, targets: Sequence[Path]) -> int:
    removed = uninstall_gimp2(gimp2_targets(args)) + uninstall(targets, venv)
    if not removed:
        say("Nothing to remove.")
    for path in removed:
        say(f"removed {path}")
    log_dir = default_log_dir()
    if log_dir.exists():
        say(f"(logs left in {log_dir})")
    return 0


def run_install(args: argparse.Namespace, venv: Path, targets: Sequence[Path]) -> int:
    meta = read_project_metadata(REPO_DIR)
    log_dir = default_log_dir()
    # Everything that can fail fast does so before the long pip steps.
    check_engine_python(interpreter_version(args.python), meta["requires-python"], args.python)
    gimp2_dirs = gimp2_targets(args)
    if args.gimp2 and not gimp2_dirs:
        raise InstallError("--gimp2: no GIMP 2.10 profile found (start GIMP 2.10 once, or name its "
                           "plug-ins folder with --gimp2-dir)")
    if targets:
        check_plugin_source(PLUGIN_SOURCE_DIR)
    for directory in [venv, log_dir, *targets, *gimp2_dirs]:
        ensure_writable_dir(directory)

    steps = 4 + (1 if targets or gimp2_dirs else 0) + (0 if args.no_selfcheck else 1)
    n = iter(range(1, steps + 1))

    say(f"[{next(n)}/{steps}] Virtual environment {venv}")
    python, how = ensure_venv(venv, python=args.python, requires_python=meta["requires-python"],
                              verbose=args.verbose)
    say(f"      {how}")

    gpu = has_nvidia_gpu()
    index_note = f" from {args.torch_index_url}" if args.torch_index_url else ""
    say(f"[{next(n)}/{steps}] Installing {args.torch}{index_note} (large download the first time)")
    if not gpu and not args.torch_index_url and normalize_platform() != "darwin":
        say("      note: no NVIDIA GPU found; if pip fetches CUDA packages, rerun with "
            "--torch-index-url https://download.pytorch.org/whl/cpu")
    install_torch(python, args.torch, args.torch_index_url, verbose=args.verbose)

    ort = onnxruntime_package(args.onnxruntime, gpu)
    say(f"[{next(n)}/{steps}] Installing {ort}")
    install_onnxruntime(python, ort, verbose=args.verbose)

    say(f"[{next(n)}/{steps}] Installing engine {meta['version']} from {REPO_DIR}")
    install_engine(python, REPO_DIR, verbose=args.verbose)
    log_dir.mkdir(parents=True, exist_ok=True)

    installed: list[Path] = []
    if targets or gimp2_dirs:
        say(f"[{next(n)}/{steps}] Installing the GIMP plug-in")
        for plugins_dir in targets:
            installed.append(install_plugin(plugins_dir, python, venv=venv, source_dir=PLUGIN_SOURCE_DIR,
                                            repo_dir=REPO_DIR, log_dir=log_dir, version=meta["version"]))
            say(f"      {installed[-1]}")
            if is_flatpak_dir(plugins_dir):
                say("      note: Flatpak GIMP runs plug-ins in its sandbox; the engine venv on the host "
                    "may not be reachable from there")

        for plugins_dir in gimp2_dirs:
            installed.append(install_gimp2_plugin(plugins_dir, python, venv=venv, source_dir=PLUGIN_SOURCE_DIR,
                                                  repo_dir=REPO_DIR, log_dir=log_dir, version=meta["version"]))
            say(f"      {installed[-1]} (GIMP 2.10, needs GIMP's Python 2 / Python-Fu)")

    if not args.no_selfcheck:
        say(f"[{next(n)}/{steps}] Engine self-check")
        say(f"      {run_selfcheck(python, verbose=args.verbose)}")

    say("")
    say("Neural Restore is installed.")
    say(f"  engine venv: {venv}")
    say(f"  engine:      {python} -m {ENGINE_MODULE}")
    say(f"  logs:        {log_dir}")
    for path in installed:
        say(f"  plug-in:     {path}")
    if installed:
        say(MENU_HINT)
    else:
        say("GIMP plug-in not installed (--no-gimp).")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        check_installer_python()
        args = parse_args(argv)
        venv = Path(os.path.abspath(os.path.expanduser(str(args.venv)))) if args.venv else default_venv_dir()
        targets = plugin_targets(args)
        if args.uninstall:
            return run_uninstall(args, venv, targets)
        return run_install(args, venv, targets)
    except InstallError as exc:
        say(f"error: {exc}", err=True)
        return 1
    except OSError as exc:  # permissions, full disk, ...: one line, not a traceback
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        say(f"error: {exc.strerror or exc}{where}", err=True)
        return 1
    except KeyboardInterrupt:
        say("error: interrupted", err=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
