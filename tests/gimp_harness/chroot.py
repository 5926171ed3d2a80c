"""Run code inside a real, headless GIMP 3.0 living in a Debian trixie chroot.

Debian 12's GIMP is 2.10 without Python-Fu, so the tests use trixie's GIMP 3.0.4 in a
chroot provisioned (and cached) by ``provision_gimp3.sh``.

Mounts: every command runs in its own private mount namespace (``unshare --mount``) in
which ``/proc``, ``/dev`` and the bind mounts are set up just before ``chroot``.  They
vanish with the last process of that command, even on SIGKILL or a crashed pytest, so
nothing is ever left mounted under the root on the host and deleting the root can never
reach host files through a forgotten bind mount.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from types import TracebackType

DEFAULT_ROOT = Path(
    os.environ.get("NEURAL_RESTORE_GIMP_ROOT", "/var/cache/neural-restore/gimp3-trixie")
)
PROVISION_SCRIPT = Path(__file__).resolve().with_name("provision_gimp3.sh")
READY_STAMP = ".neural-restore-ready"

CHROOT_HOME = "/root"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Clean environment: plug-ins' "#!/usr/bin/env python3" must find trixie's Python (with gi),
# never a host Python leaked in through PATH/PYTHONPATH.  Keep it identical to the warm-up
# in provision_gimp3.sh: a different locale makes GIMP re-query every plug-in (~7 s).
BASE_ENV: dict[str, str] = {"HOME": CHROOT_HOME, "PATH": CHROOT_PATH, "LANG": "C.UTF-8"}
GIMP_CONSOLE = "gimp-console"

# Host paths that must never be bound over the chroot's own system (or its HOME, which
# holds GIMP's config and our plug-ins).  A bind may not be one of these, an ancestor of
# one, or lie inside one (except /usr/local).
_SYSTEM_DIRS = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
    "/run", "/sbin", "/sys", "/usr", "/var/lib", "/var/cache",
)
_NO_SHADOW = _SYSTEM_DIRS + ("/tmp", "/var", "/root/.config")

# Runs as "sh -c SCRIPT sh ROOT N SRC1 RO1 ... SRCn ROn CMD...", inside the new namespace.
_NAMESPACE_SETUP = r"""
set -e
root=$1; n=$2; shift 2
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
while [ "$n" -gt 0 ]; do
    if [ "$2" = 1 ]; then mount --bind -o ro "$1" "$root$1"; else mount --bind "$1" "$root$1"; fi
    shift 2; n=$((n - 1))
done
exec chroot "$root" "$@"
"""


class GimpHarnessError(RuntimeError):
    """Provisioning failed, or a command in the chroot did (message holds its output)."""


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _norm_abs(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    if not text.startswith("/"):
        raise ValueError(f"expected an absolute path, got {text!r}")
    return posixpath.normpath(text)


def _bind_problem(path: str) -> str | None:
    for guarded in _NO_SHADOW:
        if _within(guarded, path):
            return f"binding {path} would hide the chroot's {guarded}"
    for system in _SYSTEM_DIRS:
        if _within(path, system) and not _within(path, "/usr/local"):
            return (
                f"cannot bind {path}: it is inside the system directory {system} (a "
                "Debian system Python cannot be carried into the chroot; use a pyenv or "
                "standalone build, or a venv made from one)"
            )
    return None


class Gimp3Chroot:
    """A provisioned trixie root with GIMP 3; runs batch Python in gimp-console."""

    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        self.root = Path(_norm_abs(root))
        if self.root == Path("/"):
            raise ValueError("the chroot root cannot be /")
        self._binds: dict[str, bool] = {}  # host dir -> read-only
        self._created: list[tuple[Path, Path]] = []  # (mountpoint, first dir we made)
        self._closed = False

    # -- provisioning -------------------------------------------------------------
    def is_ready(self) -> bool:
        return (self.root / READY_STAMP).exists() and any(
            (self.root / "usr/bin").glob("gimp-console*")
        )

    def provision(self) -> None:
        """Create the chroot if needed (idempotent, ~1 min the first time)."""
        proc = subprocess.run(
            ["bash", str(PROVISION_SCRIPT), str(self.root)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not self.is_ready():
            raise GimpHarnessError(
                f"provisioning {self.root} failed (exit {proc.returncode}):\n{proc.stdout}"
            )

    # -- paths ----------------------------------------------------------------------
    @property
    def home(self) -> Path:
        return self.to_host(CHROOT_HOME)

    @property
    def plugin_dir(self) -> Path:
        """Host path of the user plug-in folder GIMP scans at start-up."""
        return self.to_host(f"{CHROOT_HOME}/.config/GIMP/3.0/plug-ins")

    def to_host(self, chroot_path: str | PurePosixPath) -> Path:
        """Host path of a path seen inside the chroot.

        Paths under a bound directory map to themselves: the bind exists only inside the
        command's namespace, so on the host the real files are at the same path.
        """
        path = _norm_abs(str(chroot_path))
        for host_dir in self._binds:
            if _within(path, host_dir):
                return Path(path)
        return self.root / path.lstrip("/")

    # -- bind mounts ----------------------------------------------------------------
    def bind(self, host_path: Path, *, read_only: bool = True) -> Path:
        """Make a host directory visible at the same absolute path inside the chroot.

        Idempotent; binding the same path again read-write upgrades it.  Returns the path.
        """
        path = _norm_abs(os.path.abspath(host_path))
        if not os.path.isdir(path):
            raise ValueError(f"bind source is not a directory: {path}")
        if _within(path, str(self.root)) or _within(str(self.root), path):
            raise ValueError(f"cannot bind {path}: it overlaps the chroot root {self.root}")
        problem = _bind_problem(path)
        if problem:
            raise ValueError(problem)
        self._make_mountpoint(path)
        self._binds[path] = self._binds.get(path, True) and read_only
        return Path(path)

    def _make_mountpoint(self, path: str) -> None:
        # Refuse symlinks on the way: an absolute link inside the chroot would make the
        # host-side mkdir (and later the mount) land outside the root.
        current = self.root
        first_new: Path | None = None
        for part in PurePosixPath(path).parts[1:]:
            current = current / part
            if current.is_symlink():
                raise ValueError(f"cannot bind {path}: {current} is a symlink in the chroot")
            if first_new is None and not current.exists():
                first_new = current
        current.mkdir(parents=True, exist_ok=True)
        if first_new is not None:
            self._created.append((current, first_new))

    def bind_python(self, python_exe: Path) -> Path:
        """Bind what ``python_exe`` (a venv's or a base interpreter) needs; return it."""
        for directory in engine_python_binds(python_exe):
            self.bind(directory)
        return Path(os.path.abspath(python_exe))

    @property
    def binds(self) -> list[Path]:
        return [Path(p) for p in self._binds]

    # -- plug-ins -------------------------------------------------------------------
    def install_plugin(self, name: str, source: str | Path) -> Path:
        """Install a plug-in as ``plugin_dir/name/name.py`` (executable); return its dir.

        ``source`` is the script text, or a host directory copied whole (it must hold
        ``name.py``).  GIMP picks it up at its next start, i.e. the next batch run.
        """
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"bad plug-in name {name!r}")
        self.remove_plugin(name)
        target = self.plugin_dir / name
        if isinstance(source, Path):
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.mkdir(parents=True)
            (target / f"{name}.py").write_text(source, encoding="utf-8")
        main = target / f"{name}.py"
        if not main.is_file():
            raise ValueError(f"{source} has no {name}.py (GIMP needs folder and script to match)")
        main.chmod(0o755)
        return target

    def remove_plugin(self, name: str) -> None:
        target = self.plugin_dir / name
        if mounts_under(target):  # never delete through a mount
            raise GimpHarnessError(f"refusing to delete {target}: something is mounted in it")
        shutil.rmtree(target, ignore_errors=True)

    # -- running --------------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 300,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the chroot with a clean environment (plus ``env``)."""
        if self._closed:
            raise GimpHarnessError("Gimp3Chroot is closed")
        if not self.is_ready():
            raise GimpHarnessError(f"{self.root} is not provisioned; call provision()")
        full_env = {**BASE_ENV, **(env or {})}
        # Parents before children so nested binds stack correctly.
        binds = sorted(self._binds.items(), key=lambda item: item[0].count("/"))
        cmd: list[str] = [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", _NAMESPACE_SETUP, "sh", str(self.root), str(len(binds)),
        ]
        for host_dir, read_only in binds:
            cmd += [host_dir, "1" if read_only else "0"]
        cmd += ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in full_env.items()), *argv]
        # Own process group, so a timeout kills GIMP, its plug-ins and their children.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # exited just now
                pass
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(argv, timeout, output=out, stderr=err) from None
        return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)

    def run_batch(
        self,
        python_code: str,
        timeout: float = 300,
        *,
        env: Mapping[str, str] | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run Python code in GIMP's python-fu-eval batch interpreter, then quit GIMP.

        gimp-console exits 0 on success and 64 if the code raised (its traceback is on
        stderr).  ``print`` output lands on stdout.  With ``check`` a failure raises
        ``GimpHarnessError`` carrying both streams.
        """
        name = f"/tmp/nr-batch-{uuid.uuid4().hex}.py"
        script = self.to_host(name)
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(python_code, encoding="utf-8")
        # compile() with the file name gives tracebacks real file names and source lines.
        batch = f"exec(compile(open({name!r}).read(), {name!r}, 'exec'))"
        try:
            result = self.run(
                [GIMP_CONSOLE, "-i", "--batch-interpreter=python-fu-eval", "-b", batch, "--quit"],
                env=env,
                timeout=timeout,
            )
        finally:
            script.unlink(missing_ok=True)
        if check and result.returncode != 0:
            raise GimpHarnessError(
                f"GIMP batch failed (exit {result.returncode})\n"
                f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
            )
        return result

    # -- cleanup --------------------------------------------------------------------
    def mounts_under_root(self) -> list[str]:
        """Mount points at or below the root in *this* (the host's) mount namespace."""
        return mounts_under(self.root)

    def close(self) -> None:
        """Forget the binds and remove the empty mount-point dirs bind() made.

        Nothing is mounted on the host, so there is nothing to unmount; fail loudly if
        something else left mounts under the root.
        """
        self._closed = True
        self._binds.clear()
        leftover = self.mounts_under_root()
        if leftover:
            raise GimpHarnessError(f"mounts left under {self.root}: {leftover}")
        for mountpoint, first_new in reversed(self._created):
            # rmdir only ever removes empty directories, so this cannot delete data.
            current = mountpoint
            while _within(str(current), str(first_new)):
                try:
                    current.rmdir()
                except OSError:
                    break
                current = current.parent
        self._created.clear()

    def __enter__(self) -> Gimp3Chroot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` listed in /proc/self/mounts."""
    base = _norm_abs(root)
    found: list[str] = []
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 2:
                continue
            # /proc/self/mounts escapes blanks and backslashes as octal (\040 ...).
            point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[1])
            if _within(point, base):
                found.append(point)
    return found


_PREFIX_PROBE = (
    "import json, sys; print(json.dumps([sys.prefix, sys.base_prefix, "
    "sys.exec_prefix, sys.base_exec_prefix]))"
)


def engine_python_binds(python_exe: Path) -> list[Path]:
    """Host directories to bind so ``python_exe`` runs inside the chroot.

    That is the venv (``sys.prefix``) and the interpreter it was made from
    (``sys.base_prefix``), asked from the interpreter itself.  ``-I`` keeps the probe
    independent of PYTHON* variables and the user site, as in the chroot's clean env.
    """
    exe = os.path.abspath(python_exe)
    probe = subprocess.run(
        [exe, "-I", "-c", _PREFIX_PROBE],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if probe.returncode != 0:
        raise GimpHarnessError(f"{exe} failed to report its prefixes:\n{probe.stderr}")
    prefixes = sorted({_norm_abs(p) for p in json.loads(probe.stdout)}, key=len)
    dirs: list[str] = []
    for prefix in prefixes:
        if not any(_within(prefix, kept) for kept in dirs):  # nested: covered already
            dirs.append(prefix)
    for d in dirs:
        problem = _bind_problem(d)
        if problem:
            raise ValueError(f"{exe}: {problem}")
    # Every hop of the executable's symlink chain must resolve inside the binds
    # (a pyenv shim or /usr/bin/python3 would not exist in the chroot).
    hop = exe
    for _ in range(40):
        if not any(_within(hop, d) for d in dirs):
            raise ValueError(
                f"{exe} resolves through {hop}, outside {dirs}; pass the real "
                "interpreter (sys.executable), not a shim"
            )
        if not os.path.islink(hop):
            break
        hop = posixpath.normpath(posixpath.join(posixpath.dirname(hop), os.readlink(hop)))
    return [Path(d) for d in dirs]

