"""Python packages the plugin needs beyond what QGIS ships, and their installer.

QGIS brings numpy, GDAL and Pillow; core also needs onnxruntime (inference),
ftfy and regex (the CLIP tokenizer). They are installed with pip into a
plugin-private folder, ``<QGIS settings>/python/remoteclip_deps``, which is
appended to ``sys.path`` at plugin start. Appended, not prepended, and pip
resolves with ``numpy==<QGIS's numpy>`` as a constraint, so QGIS's own numpy
(built against its GDAL) is never replaced or shadowed; the numpy copy pip
puts into the target for the resolution is removed afterwards.

The functions that decide what to run (which onnxruntime, which python, the
exact command) are pure and take what they look at as arguments, so they can
be tested without touching the machine.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

# import name -> pip requirement (onnxruntime may become onnxruntime-gpu)
REQUIRED = {"onnxruntime": "onnxruntime", "ftfy": "ftfy", "regex": "regex"}
# needed only to convert a checkpoint into a bundle (Get in the panel): installed when first needed,
# pinned to requirements/lock.txt's version (tests check they agree)
CONVERSION = {"onnx": "onnx==1.23.2"}
PACKAGES = {**REQUIRED, **CONVERSION}
DEPS_FOLDER = "remoteclip_deps"
LOG_TAG = "RemoteCLIP"


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


def find_python(executable: str = sys.executable, exec_prefix: str = sys.exec_prefix,
                platform: str = sys.platform, exists=os.path.isfile, which=shutil.which) -> str:
    """The Python interpreter QGIS runs on, as a program pip can be started with.

    Inside QGIS ``sys.executable`` is often QGIS itself (qgis-bin.exe on Windows,
    the QGIS binary in a macOS bundle), which would open a second QGIS instead of
    running pip. Look for pythonX next to the interpreter's prefix instead.
    """
    name = os.path.basename(executable or "").lower()
    if name.startswith("python"):
        return executable
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if platform.startswith("win"):
        candidates = [os.path.join(exec_prefix, "python.exe"), os.path.join(exec_prefix, "python3.exe"),
                      os.path.join(exec_prefix, "bin", "python.exe")]
    else:
        candidates = [os.path.join(exec_prefix, "bin", f"python{version}"),
                      os.path.join(exec_prefix, "bin", "python3"), os.path.join(exec_prefix, "bin", "python")]
    for c in candidates:
        if exists(c):
            return c
    found = which(f"python{version}") or which("python3") or which("python")
    if found:
        return found
    raise FileNotFoundError(
        f"No Python interpreter found next to {executable} (looked for {', '.join(candidates)}).")


def numpy_version() -> str | None:
    try:
        import numpy
    except ImportError:
        return None
    return numpy.__version__


def requirements(onnxruntime: str, modules: list[str] | None = None) -> list[str]:
    """pip requirements for the missing import names (all of them when ``modules`` is None)."""
    modules = list(REQUIRED) if modules is None else modules
    return [onnxruntime if m == "onnxruntime" else PACKAGES[m] for m in PACKAGES if m in modules]


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
    """pip commands to run in order until one succeeds (onnxruntime-gpu first, onnxruntime as fallback)."""

    def __init__(self, python: str, target: Path, missing: list[str], smi_output: str | None,
                 numpy_ver: str | None, platform: str = sys.platform):
        self.python = python
        self.target = Path(target)
        self.missing = [m for m in PACKAGES if m in missing]
        self.numpy_version = numpy_ver
        self.constraint_file = self.target.parent / f"{DEPS_FOLDER}_constraints.txt" if numpy_ver else None
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
            reqs = requirements(ort, self.missing)
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
            # a terminal has no constraints file at hand: pin numpy inline instead
            i = cmd.index("--constraint")
            del cmd[i:i + 2]
            cmd.append(f"numpy=={self.numpy_version}")
        return format_command(cmd, self.platform)

    def prepare(self) -> None:
        self.target.mkdir(parents=True, exist_ok=True)
        if self.constraint_file is not None:
            self.constraint_file.write_text(f"numpy=={self.numpy_version}\n", encoding="utf-8")


def make_plan(missing: list[str] | None = None, target: Path | None = None) -> InstallPlan:
    """The plan for this machine: its Python, its GPU, QGIS's numpy, the missing packages."""
    return InstallPlan(find_python(), target if target is not None else deps_dir(),
                       missing_modules() if missing is None else missing, nvidia_smi_output(), numpy_version())


def run_plan(plan: InstallPlan, log=print, is_cancelled=lambda: False) -> tuple[bool, str]:
    """Run the attempts in order, streaming pip's output to ``log``; (ok, summary)."""
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
        for line in proc.stdout:
            line = line.rstrip()
            lines.append(line)
            log(line)
            if is_cancelled():
                proc.kill()
                proc.wait()
                return False, "cancelled"
        rc = proc.wait()
        if rc == 0:
            removed = prune_numpy(plan.target)
            if removed:
                log("Removed from the deps folder (QGIS's numpy is used): " + ", ".join(removed))
            add_deps_to_path(plan.target)
            importlib.invalidate_caches()   # the folder may have been on sys.path, listed before the install
            return True, f"installed {', '.join(reqs)} into {plan.target}"
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
