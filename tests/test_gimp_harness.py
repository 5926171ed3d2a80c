"""End-to-end checks of the GIMP 3 chroot harness (real gimp-console, Python-Fu, plug-ins).

Needs root; the first run provisions the chroot (~1 min), later runs reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gimp_harness import Gimp3Chroot, engine_python_binds, mounts_under

pytestmark = pytest.mark.gimp

W, H = 32, 24

# Same deterministic RGBA pattern inside GIMP's Python and here, to compare hashes.
PATTERN_SRC = (
    "bytes((x * 7 + y * 13 + c * 50) % 256 if c < 3 else 255 "
    "for y in range(H) for x in range(W) for c in range(4))"
)

BATCH_PROLOGUE = """\
import json, os
import gi
gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp
W, H = {w}, {h}
facts = {{}}
"""

BATCH_EPILOGUE = """
os.makedirs(os.path.dirname({out!r}), exist_ok=True)
with open({out!r}, "w") as fh:
    json.dump(facts, fh)
"""


def pattern() -> bytes:
    data: bytes = eval(PATTERN_SRC, {"W": W, "H": H})  # noqa: S307 - our own constant
    return data


def run_batch_json(
    gimp3: Gimp3Chroot, body: str, out: str = "/tmp/nr-harness/out.json"
) -> dict[str, Any]:
    """Run ``body`` in GIMP; it fills ``facts``, which come back through a JSON file."""
    host_out = gimp3.to_host(out)
    host_out.unlink(missing_ok=True)  # never pass on a stale file
    code = BATCH_PROLOGUE.format(w=W, h=H) + textwrap.dedent(body) + BATCH_EPILOGUE.format(out=out)
    gimp3.run_batch(code, timeout=120, check=True)
    facts: dict[str, Any] = json.loads(host_out.read_text(encoding="utf-8"))
    host_out.unlink()
    return facts


def test_batch_creates_image_and_reads_layer_bytes(gimp3: Gimp3Chroot) -> None:
    facts = run_batch_json(
        gimp3,
        f"""
        facts["gimp_version"] = Gimp.version()
        img = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
        layer = Gimp.Layer.new(img, "probe", W, H, Gimp.ImageType.RGBA_IMAGE, 100.0,
                               Gimp.LayerMode.NORMAL)
        img.insert_layer(layer, None, 0)
        rect = Gegl.Rectangle.new(0, 0, W, H)
        buf = layer.get_buffer()
        buf.set(rect, "R'G'B'A u8", {PATTERN_SRC})
        buf.flush()
        data = layer.get_buffer().get(rect, 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.CLAMP)
        facts.update(
            width=img.get_width(), height=img.get_height(),
            base_type=img.get_base_type().value_nick,
            layers=[l.get_name() for l in img.get_layers()],
            nbytes=len(data), sha256=__import__("hashlib").sha256(bytes(data)).hexdigest(),
        )
        img.delete()
        """,
    )
    assert facts["gimp_version"].startswith("3.0")
    assert (facts["width"], facts["height"]) == (W, H)
    assert facts["base_type"] == "rgb"
    assert facts["layers"] == ["probe"]
    assert facts["nbytes"] == W * H * 4
    assert facts["sha256"] == hashlib.sha256(pattern()).hexdigest()


PROBE_PLUGIN = '''\
#!/usr/bin/env python3
# Throw-away plug-in: hands the layer's pixels to a host interpreter and names a layer
# after its answer, or fails with the interpreter's error message.
import subprocess
import sys

import gi
gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, GLib

ENGINE_PYTHON = {python!r}
CHILD = ("import hashlib, sys; data = sys.stdin.buffer.read(); "
         "print(len(data), hashlib.sha256(data).hexdigest()[:16], '%d.%d' % sys.version_info[:2])")


class Probe(Gimp.PlugIn):
    def do_query_procedures(self):
        return ["{name}", "{name}-fail"]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, self.run, None)
        procedure.set_image_types("*")
        return procedure

    def run(self, procedure, run_mode, image, drawables, config, data):
        if procedure.get_name().endswith("-fail"):
            child = subprocess.run(
                [ENGINE_PYTHON, "-I", "-c", "import sys; sys.exit('engine says: out of memory')"],
                capture_output=True, text=True)
            return procedure.new_return_values(
                Gimp.PDBStatusType.EXECUTION_ERROR,
                GLib.Error(f"engine failed (exit {{child.returncode}}): {{child.stderr.strip()}}"))
        drawable = drawables[0]
        w, h = drawable.get_width(), drawable.get_height()
        pixels = drawable.get_buffer().get(
            Gegl.Rectangle.new(0, 0, w, h), 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.CLAMP)
        child = subprocess.run([ENGINE_PYTHON, "-I", "-c", CHILD], input=bytes(pixels),
                               capture_output=True)
        if child.returncode != 0:
            return procedure.new_return_values(
                Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(child.stderr.decode()))
        layer = Gimp.Layer.new(image, "engine:" + child.stdout.decode().strip(), w, h,
                               Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
        image.insert_layer(layer, None, 0)
        return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


Gimp.main(Probe.__gtype__, sys.argv)
'''

RUN_PROCEDURE = """
img = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
layer = Gimp.Layer.new(img, "probe", W, H, Gimp.ImageType.RGBA_IMAGE, 100.0,
                       Gimp.LayerMode.NORMAL)
img.insert_layer(layer, None, 0)
buf = layer.get_buffer()
buf.set(Gegl.Rectangle.new(0, 0, W, H), "R'G'B'A u8", {pattern})
buf.flush()
pdb = Gimp.get_pdb()
proc = pdb.lookup_procedure({procedure!r})
facts["found"] = proc is not None
cfg = proc.create_config()
cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
cfg.set_property("image", img)
cfg.set_core_object_array("drawables", [layer])
result = proc.run(cfg)
facts["status"] = result.index(0).value_nick
# On failure GIMP appends the GLib.Error message as a string at index 1.
facts["message"] = result.index(1) if result.length() > 1 else None
facts["last_error"] = pdb.get_last_error()
facts["layers"] = [l.get_name() for l in img.get_layers()]
img.delete()
"""


@pytest.fixture(scope="module")
def probe_plugin(gimp3: Gimp3Chroot) -> Iterator[str]:
    """Install the throw-away plug-in (bound to the host's interpreter) and remove it after."""
    base_python = Path(sys.base_prefix) / "bin" / "python3"  # venv-less host interpreter
    gimp3.bind_python(base_python)
    gimp3.bind_python(Path(sys.executable))  # same dirs when pytest runs in a venv too
    name = f"nr-harness-probe-{uuid.uuid4().hex[:8]}"
    gimp3.install_plugin(name, PROBE_PLUGIN.format(python=str(base_python), name=name))
    try:
        yield name
    finally:
        gimp3.remove_plugin(name)
        assert not (gimp3.plugin_dir / name).exists()


def test_plugin_runs_host_interpreter_subprocess(gimp3: Gimp3Chroot, probe_plugin: str) -> None:
    facts = run_batch_json(
        gimp3, RUN_PROCEDURE.format(pattern=PATTERN_SRC, procedure=probe_plugin)
    )
    assert facts["found"]
    assert facts["status"] == "success", facts
    expected = "engine:{} {} {}.{}".format(
        W * H * 4, hashlib.sha256(pattern()).hexdigest()[:16], *sys.version_info[:2]
    )
    assert facts["layers"] == [expected, "probe"]


def test_plugin_error_message_reaches_caller(gimp3: Gimp3Chroot, probe_plugin: str) -> None:
    facts = run_batch_json(
        gimp3, RUN_PROCEDURE.format(pattern=PATTERN_SRC, procedure=f"{probe_plugin}-fail")
    )
    assert facts["status"] == "execution-error"
    assert facts["message"] == "engine failed (exit 1): engine says: out of memory"
    assert facts["last_error"] == facts["message"]
    assert facts["layers"] == ["probe"]


def test_failing_batch_reports_traceback(gimp3: Gimp3Chroot) -> None:
    result = gimp3.run_batch("x = 1\nraise ValueError('harness-boom')\n", timeout=120)
    assert result.returncode == 64
    assert "ValueError: harness-boom" in result.stderr
    assert "/tmp/nr-batch-" in result.stderr  # tracebacks name the batch file


def _processes_in(root: Path) -> list[int]:
    """PIDs whose filesystem root is the chroot (i.e. anything still running in it)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/root") == str(root):
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def test_timeout_kills_gimp_and_children(gimp3: Gimp3Chroot) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        gimp3.run_batch("import time\ntime.sleep(120)\n", timeout=5)
    assert _processes_in(gimp3.root) == []


def test_venv_python_runs_in_chroot_and_leaves_no_mounts(
    gimp3: Gimp3Chroot, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    assert set(engine_python_binds(python)) == {venv, Path(sys.base_prefix)}

    with Gimp3Chroot(gimp3.root) as chroot:
        chroot.bind_python(python)
        chroot.bind(tmp_path, read_only=False)
        assert chroot.to_host(str(tmp_path / "x")) == tmp_path / "x"
        assert chroot.to_host("/tmp/y") == gimp3.root / "tmp" / "y"
        out = chroot.run(
            [str(python), "-c",
             "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(sys.prefix); "
             "print(open('/etc/debian_version').read().strip())",
             str(tmp_path / "prefix.txt")],
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().startswith("13")  # really inside trixie
        assert (tmp_path / "prefix.txt").read_text() == str(venv)
    assert mounts_under(gimp3.root) == []
