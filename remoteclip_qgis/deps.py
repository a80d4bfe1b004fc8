"""Python packages the plugin needs beyond what QGIS ships, and their installer.

QGIS brings numpy, GDAL and Pillow; core also needs onnxruntime (inference),
ftfy and regex (the CLIP tokenizer). They are installed with pip into a
plugin-private folder, ``<QGIS settings>/python/remoteclip_deps``, which is
appended to ``sys.path`` at plugin start. Appended, not prepended, and pip
resolves with ``numpy==<QGIS's numpy>`` as a constraint, so QGIS's own numpy
(built against its GDAL) is never replaced or shadowed; the numpy copy pip
puts into the target for the resolution is removed afterwards.

Versions come from the pin set the running QGIS's test leg installs (``PIN_SETS``:
``requirements/lock.txt`` on QGIS 3.22, ``requirements/constraints-qgis-<leg>.txt``
on 3.40 and 3.44; shipped inside the plugin by scripts/package.py): what is
installed is pinned to it, and the rest of the set is a pip constraint for the
packages they pull in.

pip runs on the interpreter QGIS itself runs on (``find_python``), never the
first ``python3`` on PATH: inside QGIS ``sys.executable`` is QGIS's binary on
Windows and macOS, and on Linux whatever ``python3`` PATH found first (a pyenv
shim, another version), for which pip would resolve other wheels or build
numpy from source.

The functions that decide what to run (which onnxruntime, which python, the
exact command) are pure and take what they look at as arguments, so they can
be tested without touching the machine.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

# import name -> pip project (onnxruntime may become onnxruntime-gpu); versions from PIN_SETS' file
REQUIRED = {"onnxruntime": "onnxruntime", "ftfy": "ftfy", "regex": "regex"}
# needed only to convert a checkpoint into a bundle (Get in the panel): installed when first needed
CONVERSION = {"onnx": "onnx"}
PACKAGES = {**REQUIRED, **CONVERSION}
# a GPU build is released with the CPU build's version numbers: it takes the CPU build's pin
SAME_VERSION_AS = {"onnxruntime-gpu": "onnxruntime"}
DEPS_FOLDER = "remoteclip_deps"
LOG_TAG = "RemoteCLIP"
PLUGIN_DIR = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------- checks

def is_available(module: str) -> bool:
    """True when ``module`` can be found; nothing is imported (onnxruntime takes a while)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_modules() -> list[str]:
    """Import names of the required packages that cannot be found, in REQUIRED's order."""
    return [m for m in REQUIRED if not is_available(m)]


def missing_for_conversion() -> list[str]:
    """Import names of the packages converting a checkpoint needs that cannot be found."""
    return [m for m in CONVERSION if not is_available(m)]


def deps_dir(settings_dir: str | os.PathLike | None = None) -> Path:
    """The plugin-private package folder inside QGIS's settings (profile) folder."""
    if settings_dir is None:
        settings_dir = QgsApplication.qgisSettingsDirPath()
    return Path(settings_dir) / "python" / DEPS_FOLDER


def add_deps_to_path(folder: str | os.PathLike | None = None, path: list[str] | None = None) -> bool:
    """Append the deps folder to ``sys.path`` (once) when it exists. Returns True if it is on the path."""
    folder = Path(folder) if folder is not None else deps_dir()
    path = sys.path if path is None else path
    if not folder.is_dir():
        return False
    entry = os.fspath(folder)
    if entry not in path:
        path.append(entry)
        importlib.invalidate_caches()
    return True


# ------------------------------------------------------------------------------------------ pins

# The pins installed are those the test leg of the running QGIS installs: the newest leg not newer than it
# (Qgis.QGIS_VERSION_INT since which -> file in requirements/). QGIS 3.22 is the host leg (scripts/setup.sh:
# lock.txt), 3.40 and 3.44 the matrix legs (scripts/qgis_matrix.sh: constraints-qgis-<leg>.txt).
PIN_SETS = ((34400, "constraints-qgis-3.44.txt"), (34000, "constraints-qgis-3.40.txt"), (0, "lock.txt"))


def pin_set(qgis_version: int | None = None) -> str:
    """The file name under requirements/ of the pins for this QGIS (default: the running one)."""
    version = Qgis.QGIS_VERSION_INT if qgis_version is None else qgis_version
    return next(name for since, name in PIN_SETS if version >= since)


def lock_file(qgis_version: int | None = None) -> Path | None:
    """The pin set of this QGIS's test leg (:func:`pin_set`): inside the packaged plugin, or the repository's
    in a development checkout."""
    for folder in (PLUGIN_DIR, PLUGIN_DIR.parent):
        path = folder / "requirements" / pin_set(qgis_version)
        if path.is_file():
            return path
    return None


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: str | os.PathLike | None = None) -> dict[str, str]:
    """Canonical project name -> version of every ``name==version`` line of the lock file ({} without one)."""
    path = lock_file() if path is None else Path(path)
    if path is None or not Path(path).is_file():
        return {}
    pins = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        name, sep, version = line.partition("==")
        if sep and name.strip() and version.strip():
            pins[_canonical(name.strip())] = version.strip()
    return pins


def pinned(project: str, pins: dict[str, str]) -> str:
    """``project==version`` from the lock (a GPU build takes its CPU build's version); the bare name when
    the lock does not list it."""
    version = pins.get(_canonical(project)) or pins.get(_canonical(SAME_VERSION_AS.get(project, "")))
    return f"{project}=={version}" if version else project


# -------------------------------------------------------------------------------------- decisions

def nvidia_smi_output(timeout: float = 10.0) -> str | None:
    """``nvidia-smi -L`` output, or None when there is no working NVIDIA driver."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=timeout,
                              **_no_window())
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def gpu_usable(smi_output: str | None) -> bool:
    """An NVIDIA GPU is usable when ``nvidia-smi -L`` worked and listed at least one GPU."""
    return bool(smi_output) and any(line.strip().startswith("GPU ") for line in smi_output.splitlines())


def onnxruntime_package(smi_output: str | None, platform: str = sys.platform) -> str:
    """onnxruntime-gpu when an NVIDIA GPU is usable (Linux and Windows wheels only), else onnxruntime."""
    if gpu_usable(smi_output) and platform.startswith(("linux", "win")):
        return "onnxruntime-gpu"
    return "onnxruntime"


def python_candidates(executable: str, exec_prefix: str, platform: str = sys.platform,
                      base_executable: str = "", version: tuple[int, int] = sys.version_info[:2]) -> list[str]:
    """Where the interpreter QGIS runs on lives, most likely first, by each platform's conventions:

    * Windows (OSGeo4W, the standalone installer): ``python.exe``/``python3.exe`` in ``sys.exec_prefix``
      (``<QGIS>\\apps\\Python3x``); ``sys.executable`` is ``qgis-bin.exe``;
    * macOS (the app bundle): ``QGIS.app/Contents/MacOS/bin/python3``, else ``bin/python3.x`` of
      ``sys.exec_prefix`` (the bundle's Python framework); ``sys.executable`` is the QGIS binary;
    * Linux: ``bin/python3.x`` of ``sys.exec_prefix`` (``/usr/bin/python3.11``); ``sys.executable`` is what
      PATH found first for ``python3``.

    ``sys.executable`` and ``sys._base_executable`` come last, and only when they are named python."""
    major, minor = version
    out: list[str] = []
    if platform.startswith("win"):
        out += [os.path.join(exec_prefix, "python.exe"), os.path.join(exec_prefix, f"python{major}.exe")]
    else:
        if platform == "darwin" and ".app/Contents/" in (executable or ""):
            bundle = executable[:executable.index(".app/Contents/") + len(".app/Contents/")]
            out.append(os.path.join(bundle, "MacOS", "bin", f"python{major}"))
        out += [os.path.join(exec_prefix, "bin", f"python{major}.{minor}"),
                os.path.join(exec_prefix, "bin", f"python{major}")]
    for exe in (base_executable, executable):
        if exe and os.path.basename(exe).lower().startswith("python") and exe not in out:
            out.append(exe)
    return out


_PROBE = ("import os, sys; print(sys.version_info[0], sys.version_info[1]); "
          "print(os.path.realpath(sys.base_exec_prefix))")


def interpreter_identity() -> tuple[int, int, str]:
    """(major, minor, real base prefix) of the Python running this code."""
    return sys.version_info[0], sys.version_info[1], os.path.realpath(sys.base_exec_prefix)


@functools.lru_cache(maxsize=32)
def probe_python(path: str, timeout: float = 30.0) -> tuple[int, int, str] | None:
    """(major, minor, real base prefix) of the interpreter at ``path``, or None when it does not run."""
    try:
        done = subprocess.run([path, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=timeout,
                              **_no_window())
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.splitlines()
    if done.returncode != 0 or len(lines) < 2:
        return None
    try:
        major, minor = (int(v) for v in lines[0].split())
    except ValueError:
        return None
    return major, minor, lines[1].strip()


def find_python(executable: str = sys.executable, exec_prefix: str = sys.exec_prefix,
                platform: str = sys.platform, exists=os.path.isfile, probe=None,
                base_executable: str | None = None) -> str:
    """The Python interpreter QGIS runs on, as a program pip can be started with.

    Each of ``python_candidates`` that exists is run once (``probe(path)``, default: it prints its
    version and base prefix) and taken only when it is this interpreter: same major.minor and the same
    installation (a pyenv shim or a venv of another Python is not). Raises FileNotFoundError naming
    the places looked at when none is."""
    if base_executable is None:
        base_executable = getattr(sys, "_base_executable", "") or ""
    if probe is None:
        want = interpreter_identity()

        def probe(path):
            got = probe_python(path)
            return got is not None and got[:2] == want[:2] and os.path.normcase(got[2]) == os.path.normcase(want[2])
    candidates = python_candidates(executable, exec_prefix, platform, base_executable)
    for c in candidates:
        if exists(c) and probe(c):
            return c
    raise FileNotFoundError(
        f"QGIS's Python interpreter was not found (looked for {', '.join(candidates)}; a python there must be "
        f"Python {sys.version_info[0]}.{sys.version_info[1]} of {sys.base_exec_prefix}).")


def numpy_version() -> str | None:
    try:
        import numpy
    except ImportError:
        return None
    return numpy.__version__


def requirements(onnxruntime: str, modules: list[str] | None = None, pins: dict[str, str] | None = None
                 ) -> list[str]:
    """pip requirements for the missing import names (all of them when ``modules`` is None), each pinned
    to the lock file's version."""
    modules = list(REQUIRED) if modules is None else modules
    pins = read_pins() if pins is None else pins
    return [pinned(onnxruntime if m == "onnxruntime" else PACKAGES[m], pins) for m in PACKAGES if m in modules]


def install_command(python: str, target: str | os.PathLike, packages: list[str],
                    constraint_file: str | os.PathLike | None = None) -> list[str]:
    """The pip command line that installs ``packages`` into ``target``."""
    cmd = [python, "-m", "pip", "install", "--upgrade", "--disable-pip-version-check",
           "--target", os.fspath(target)]
    if constraint_file is not None:
        cmd += ["--constraint", os.fspath(constraint_file)]
    return cmd + list(packages)


def format_command(cmd: list[str], platform: str = sys.platform) -> str:
    """The command as a user would paste it into a terminal (cmd.exe or a POSIX shell)."""
    if platform.startswith("win"):
        return subprocess.list2cmdline(cmd)
    import shlex

    return shlex.join(cmd)


def prune_numpy(target: Path) -> list[str]:
    """Remove the numpy pip resolved into the target: QGIS's numpy is the one that must load."""
    removed = []
    if not target.is_dir():
        return removed
    for p in target.iterdir():
        n = p.name.lower()
        if n in ("numpy", "numpy.libs") or (n.startswith("numpy-") and n.endswith(".dist-info")):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p.name)
    bin_dir = target / "bin"
    for script in ("f2py", "f2py3", "numpy-config"):
        (bin_dir / script).unlink(missing_ok=True)
    return removed


class InstallPlan:
    """pip commands to run in order until one succeeds (onnxruntime-gpu first, onnxruntime as fallback).

    Each package is pinned to the lock file's version (``pins``, default ``read_pins()``); a constraints
    file beside the target holds QGIS's numpy and the rest of the lock, for what they pull in."""

    def __init__(self, python: str, target: Path, missing: list[str], smi_output: str | None,
                 numpy_ver: str | None, platform: str = sys.platform, pins: dict[str, str] | None = None):
        self.python = python
        self.target = Path(target)
        self.missing = [m for m in PACKAGES if m in missing]
        self.numpy_version = numpy_ver
        self.pins = read_pins() if pins is None else dict(pins)
        self.constraints = ([f"numpy=={numpy_ver}"] if numpy_ver else []) + [
            f"{name}=={version}" for name, version in sorted(self.pins.items()) if name != "numpy"]
        self.constraint_file = self.target.parent / f"{DEPS_FOLDER}_constraints.txt" if self.constraints else None
        self.ort = onnxruntime_package(smi_output, platform)
        self.platform = platform
        self.attempts: list[tuple[list[str], list[str]]] = []   # (requirements, command)
        if not self.missing:
            return
        choices = [self.ort]
        if self.ort != "onnxruntime" and "onnxruntime" in self.missing:
            # no GPU wheel for this Python/platform, or its download failed: the CPU build always exists
            choices.append("onnxruntime")
        for ort in choices:
            reqs = requirements(ort, self.missing, self.pins)
            self.attempts.append((reqs, install_command(python, self.target, reqs, self.constraint_file)))

    @property
    def commands(self) -> list[list[str]]:
        return [cmd for _, cmd in self.attempts]

    def manual_command(self) -> str:
        """What to paste in a terminal when the installer fails (the attempt most likely to work: the last)."""
        if not self.attempts:
            return ""
        cmd = list(self.attempts[-1][1])
        if "--constraint" in cmd:
            # a terminal has no constraints file at hand: the packages are pinned already, numpy inline
            i = cmd.index("--constraint")
            del cmd[i:i + 2]
            if self.numpy_version:
                cmd.append(f"numpy=={self.numpy_version}")
        return format_command(cmd, self.platform)

    def prepare(self) -> None:
        self.target.mkdir(parents=True, exist_ok=True)
        if self.constraint_file is not None:
            self.constraint_file.write_text("".join(line + "\n" for line in self.constraints), encoding="utf-8")


def make_plan(missing: list[str] | None = None, target: Path | None = None) -> InstallPlan:
    """The plan for this machine: its Python, its GPU, QGIS's numpy, the missing packages."""
    return InstallPlan(find_python(), target if target is not None else deps_dir(),
                       missing_modules() if missing is None else missing, nvidia_smi_output(), numpy_version())


# pip's words when it could not reach the package index (its retries' warnings and final errors)
NETWORK_SIGNS = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
                 "Name or service not known", "nodename nor servname", "getaddrinfo failed", "Network is unreachable",
                 "No route to host", "ConnectTimeoutError", "ProxyError", "Max retries exceeded",
                 "connection broken by")
# what pip says when it found no version at all: offline, or an index that has none (told apart by a connect)
NOTHING_FOUND = ("(from versions: none)", "ResolutionImpossible", "No matching distribution found")
NO_NETWORK = "no network:"


def index_url(environ=os.environ) -> str:
    return environ.get("PIP_INDEX_URL") or "https://pypi.org/simple"


def index_reachable(url: str | None = None, timeout: float = 3.0, environ=os.environ) -> bool:
    """A quick connect to the package index's host (True when a proxy is set: pip's way there is not ours)."""
    import socket
    from urllib.parse import urlsplit

    if any(environ.get(k) for k in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "PIP_PROXY")):
        return True
    parts = urlsplit(url or index_url(environ))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def network_trouble(lines: list[str], reachable=index_reachable) -> str | None:
    """Why pip failed when it is the network: the line saying so (or the index that cannot be reached), else
    None (a real conflict or another error)."""
    for line in lines:
        if any(sign in line for sign in NETWORK_SIGNS):
            return line.strip()
    if any(sign in line for line in lines for sign in NOTHING_FOUND) and not reachable():
        return f"{index_url()} cannot be reached"
    return None


def run_plan(plan: InstallPlan, log=print, is_cancelled=lambda: False) -> tuple[bool, str]:
    """Run the attempts in order, streaming pip's output to ``log``; (ok, summary). A summary that starts with
    ``NO_NETWORK`` means pip could not reach the package index (then no further attempt is made)."""
    plan.prepare()
    last = ""
    for reqs, cmd in plan.attempts:
        log("Running: " + format_command(cmd, plan.platform))
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    errors="replace", **_no_window())
        except OSError as e:
            last = f"could not start {cmd[0]}: {e}"
            log(last)
            continue
        lines = []
        with proc:   # closes pip's output pipe and waits for it, whichever way this ends
            for line in proc.stdout:
                line = line.rstrip()
                lines.append(line)
                log(line)
                if is_cancelled():
                    proc.kill()
                    return False, "cancelled"
        rc = proc.returncode
        if rc == 0:
            removed = prune_numpy(plan.target)
            if removed:
                log("Removed from the deps folder (QGIS's numpy is used): " + ", ".join(removed))
            add_deps_to_path(plan.target)
            importlib.invalidate_caches()   # the folder may have been on sys.path, listed before the install
            return True, f"installed {', '.join(reqs)} into {plan.target}"
        trouble = network_trouble(lines)
        if trouble is not None:
            return False, f"{NO_NETWORK} pip could not reach the package index {index_url()} ({trouble})"
        last = f"pip exited with code {rc}: " + " / ".join(lines[-3:])
        if any("No module named pip" in ln for ln in lines):
            last += (" (this Python has no pip: on Debian/Ubuntu run `sudo apt install python3-pip`, "
                     "elsewhere `python -m ensurepip --user`)")
    return False, last


def _no_window() -> dict:
    # no console window flashing up on Windows
    if sys.platform.startswith("win"):
        return {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {}


# ------------------------------------------------------------------------------------- QGIS task

class InstallTask(QgsTask):
    """Runs an InstallPlan in the background, pip's output going to the log panel (tag RemoteCLIP)."""

    done = pyqtSignal(bool, str, str)   # ok, summary, the command to run by hand

    def __init__(self, plan: InstallPlan):
        super().__init__("Installing RemoteCLIP dependencies", QgsTask.Flag.CanCancel)
        self.plan = plan
        self.ok = False
        self.summary = ""

    def run(self) -> bool:
        def log(line: str) -> None:
            QgsMessageLog.logMessage(line, LOG_TAG, Qgis.MessageLevel.Info)

        try:
            self.ok, self.summary = run_plan(self.plan, log=log, is_cancelled=self.isCanceled)
        except Exception as e:  # the user gets the manual command either way
            self.ok, self.summary = False, f"{type(e).__name__}: {e}"
        return self.ok

    def finished(self, ok: bool) -> None:
        self.done.emit(bool(ok and self.ok), self.summary, self.plan.manual_command())
