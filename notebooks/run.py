"""Executes the notebooks with a real Jupyter kernel: quick mode for the tests, full mode to refresh
the committed outputs.

    python notebooks/run.py                      # every notebook, full mode, outputs written in place
    python notebooks/run.py notebooks/03_*.ipynb # one notebook
    python notebooks/run.py --quick --no-write   # what the tests do: quick mode, nothing written

Quick mode: the kernel gets KD_TF_NOTEBOOK_QUICK=1 in its environment, and each notebook's first
cell (tagged "parameters") picks small values from it (a few dozen steps, small crops). Single
parameters can also be overridden: `execute(..., parameters={"TEACHER": "x.keras"})` inserts a
cell tagged "injected-parameters" right after the parameters cell, as papermill does.

Before a notebook is written, the native libraries' start-up and progress chatter (absl/TensorFlow C++
log lines, the TFLite converter's and XNNPACK's notices, libpng's colour-profile warning) is dropped from
its stderr outputs (`drop_native_log_lines`); Python warnings and everything else are kept.
A full run (written in place) records in the notebook's metadata the SHA-256 of its code cells'
sources and the SHA-256 of what they run (`dependencies_sha256`: the kd_tf modules the notebook
imports, followed through kd_tf's own imports, and the model files its parameters name);
tests/test_notebooks.py checks that the committed outputs came from the committed code and kd_tf.
TensorBoard servers that a notebook's `%tensorboard` started are stopped when the run ends.
"""

from __future__ import annotations

import argparse
import ast
import copy
import datetime
import hashlib
import os
import re
import signal
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
QUICK_ENV = "KD_TF_NOTEBOOK_QUICK"
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
METADATA_KEY = "kd_tf"


NATIVE_LOG_LINE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] .*"          # absl-format C++ INFO/WARNING lines
    r"|libpng warning: iCCP: .*"
    r"|fully_quantize: \d+, inference_type: .*"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.)$")


def notebooks() -> list[Path]:
    """Every notebook in notebooks/, sorted (checkpoints excluded)."""
    return sorted(p for p in NOTEBOOK_DIR.glob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def code_sha256(nb) -> str:
    """Hash of the notebook's code cells (injected parameters excluded): what produced its outputs."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code" and INJECTED_TAG not in cell.get("metadata", {}).get("tags", []):
            digest.update(cell.source.encode())
            digest.update(b"\0")
    return digest.hexdigest()


def _kd_tf_imports(source: str) -> set[str]:
    """The kd_tf modules that `source` imports, anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "kd_tf")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "kd_tf":
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)   # `from kd_tf import data`
    return found


def _module_file(name: str, root: Path) -> Path | None:
    path = root.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def kd_tf_modules(nb, root: Path = REPO_ROOT) -> list[Path]:
    """The kd_tf source files a notebook's code runs: its kd_tf imports, followed through kd_tf's
    own imports (each package's __init__.py included), sorted."""
    pending, files = set(), set()
    for cell in nb.cells:
        if cell.cell_type == "code":                              # IPython magics become `pass`
            lines = [line[:len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith(("%", "!")) else line
                     for line in cell.source.splitlines()]
            pending.update(_kd_tf_imports("\n".join(lines)))
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):                  # kd_tf/__init__.py, kd_tf/sr/__init__.py ...
            path = _module_file(".".join(parts[:depth]), root)
            if path is not None and path not in files:
                files.add(path)
                pending.update(_kd_tf_imports(path.read_text()))
    return sorted(files)


def model_files(nb, root: Path = REPO_ROOT) -> list[Path]:
    """The model files that the parameters cell names and that exist (relative to the repository)."""
    cell = next((c for c in nb.cells if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])), None)
    found = set()
    for node in ast.walk(ast.parse(cell.source if cell else "")):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                node.value.lower().endswith((".keras", ".h5", ".hdf5", ".tflite")):
            path = root / node.value
            if path.is_file():
                found.add(path)
    return sorted(found)


def dependencies_sha256(nb, root: Path = REPO_ROOT) -> str:
    """Hash of what a notebook's code runs besides itself: kd_tf_modules and model_files, by
    path (relative to `root`) and content. A change to either makes the committed outputs stale.

    >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("from kd_tf.metrics import psnr")])
    >>> names = [p.relative_to(REPO_ROOT).as_posix() for p in kd_tf_modules(nb)]
    >>> names[0], "kd_tf/metrics.py" in names, "kd_tf/sr/jobs.py" in names
    ('kd_tf/__init__.py', True, False)
    """
    digest = hashlib.sha256()
    for path in kd_tf_modules(nb, root) + model_files(nb, root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def inject_parameters(nb, parameters: dict):
    """A copy of `nb` with a cell assigning `parameters` right after the cell tagged "parameters"."""
    nb = copy.deepcopy(nb)
    tagged = [i for i, c in enumerate(nb.cells) if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise ValueError("the notebook has no cell tagged 'parameters' to override")
    source = "# Injected parameters\n" + "".join(f"{name} = {value!r}\n" for name, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]})
    nb.cells.insert(tagged[0] + 1, cell)
    return nb


def _tensorboards() -> dict[int, object]:
    try:
        from tensorboard import manager
    except ImportError:
        return {}
    return {info.pid: info for info in manager.get_all()}


def _started_by_us(pid: int) -> bool:
    """Whether process `pid` descends from this one (a TensorBoard the run's kernel started), not
    from another notebook run or a user's shell. psutil comes with ipykernel."""
    import psutil

    try:
        return any(parent.pid == os.getpid() for parent in psutil.Process(pid).parents())
    except psutil.Error:
        return False


def _stop_new_tensorboards(before: dict):
    """Stops the TensorBoard servers this run started (new pids descending from this process) and
    removes their info files (TensorBoard's manager removes only its own process's)."""
    from tensorboard import manager

    for pid in _tensorboards():
        if pid in before or not _started_by_us(pid):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        info_file = Path(manager._get_info_dir()) / f"pid-{pid}.info"     # noqa: SLF001 - no public call
        info_file.unlink(missing_ok=True)


def _kernel_env(quick: bool) -> dict:
    return dict(os.environ, **{QUICK_ENV: "1" if quick else "0", "TF_CPP_MIN_LOG_LEVEL": "3",
                               "PYTHONWARNINGS": "ignore::DeprecationWarning"})


def _client(nb, path: Path, cwd, timeout: int) -> NotebookClient:
    """A "python3" kernel's client for `nb`, working in `cwd` (default: the notebook's folder, as Jupyter does)."""
    return NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                          resources={"metadata": {"path": str(cwd or path.parent)}})


def execute(path, quick: bool = True, parameters: dict | None = None, cwd=None, timeout: int = 1800,
            client_out: dict | None = None):
    """Runs the notebook at `path` top to bottom in a fresh "python3" kernel and returns it executed.

    cwd: the kernel's working directory (default: the notebook's folder, as Jupyter does).
    A cell error raises nbclient's CellExecutionError (ename, evalue, traceback); the partly
    executed notebook is then in client_out["nb"] when a dict is passed.
    """
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    if parameters:
        nb = inject_parameters(nb, parameters)
    client = _client(nb, path, cwd, timeout)
    if client_out is not None:
        client_out["nb"] = nb
    before = _tensorboards()
    try:
        client.execute(env=_kernel_env(quick))
    finally:
        _stop_new_tensorboards(before)
    return nb


def execute_each(path, parameter_sets: list[dict], quick: bool = True, cwd=None, timeout: int = 1800) -> list:
    """Runs the notebook at `path` once per dict of `parameter_sets`, each from the top until its
    first cell error, all in one "python3" kernel: starting a kernel and importing TensorFlow cost
    more than the cells before a notebook loads its models. Returns (executed notebook, the
    CellExecutionError or None) per run. Each run's injected cell reassigns its parameters after
    the parameters cell has reassigned them all, and every cell before the error runs again, so what
    an earlier run left in the kernel is overwritten before it is read."""
    path = Path(path)
    base = nbformat.read(path, as_version=4)
    client = _client(base, path, cwd, timeout)
    runs = []
    before = _tensorboards()
    try:
        with client.setup_kernel(env=_kernel_env(quick)):
            for parameters in parameter_sets:
                nb = inject_parameters(base, parameters)
                client.nb = nb
                client.reset_execution_trackers()
                try:
                    for index, cell in enumerate(nb.cells):
                        client.execute_cell(cell, index)
                    runs.append((nb, None))
                except CellExecutionError as error:
                    runs.append((nb, error))
    finally:
        _stop_new_tensorboards(before)
    return runs


def drop_native_log_lines(nb):
    """Removes native-library log lines (NATIVE_LOG_LINE) from stderr outputs, and outputs left empty."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            if output.output_type == "stream" and output.name == "stderr":
                lines = [line for line in output.text.splitlines(keepends=True)
                         if not NATIVE_LOG_LINE.match(line.rstrip("\n"))]
                output.text = "".join(lines)
                if not output.text.strip():
                    continue
            kept.append(output)
        cell.outputs = kept
    return nb


def run_full(path: Path, write: bool = True, quick: bool = False) -> float:
    """Executes one notebook from the repository root and (optionally) writes its outputs in place."""
    started = time.time()
    nb = execute(path, quick=quick, cwd=REPO_ROOT)
    seconds = time.time() - started
    if write:
        drop_native_log_lines(nb)
        nb.metadata[METADATA_KEY] = {"mode": "quick" if quick else "full", "code_sha256": code_sha256(nb),
                                     "dependencies_sha256": dependencies_sha256(nb),
                                     "executed": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                                     "seconds": round(seconds)}
        temporary = path.with_name(f".{path.stem}.partial.ipynb")
        nbformat.write(nb, temporary)
        os.replace(temporary, path)
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb")
    parser.add_argument("--quick", action="store_true", help=f"quick mode ({QUICK_ENV}=1)")
    parser.add_argument("--no-write", action="store_true", help="execute only, keep the files unchanged")
    args = parser.parse_args(argv)
    for path in args.notebooks or notebooks():
        print(f"executing {path} ({'quick' if args.quick else 'full'} mode)", flush=True)
        seconds = run_full(path, write=not args.no_write, quick=args.quick)
        print(f"  done in {seconds:.0f} s{'' if args.no_write else ', outputs written'}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
