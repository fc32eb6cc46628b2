"""Every notebooks/*.ipynb runs top to bottom in a real Jupyter kernel (nbclient, kernel "python3")
in quick mode, stops with kd_tf's one-line error when a model file is missing, and is committed
with the outputs of a full run of its committed code.

Quick mode: notebooks/run.py starts the kernel with KD_TF_NOTEBOOK_QUICK=1, which the notebook's
first cell (tagged "parameters") reads to pick a few dozen steps and small crops. Single
parameters are overridden with a cell injected after that one (papermill's convention).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("notebook_runner", ROOT / "notebooks" / "run.py")
runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runner)

NOTEBOOKS = runner.notebooks()
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5", ".tflite")
MAX_COMMITTED_BYTES = 2 * 2**20


def _ids(paths):
    return [path.stem for path in paths]


def _tags(cell) -> list:
    return cell.get("metadata", {}).get("tags", [])


def _parameters_cell(nb):
    tagged = [cell for cell in nb.cells if "parameters" in _tags(cell)]
    assert len(tagged) == 1, "a notebook needs exactly one cell tagged 'parameters' (quick mode and overrides)"
    return tagged[0]


def _model_parameters(path: Path) -> list[str]:
    """Parameters whose default is a model file path (a string ending in a model suffix)."""
    tree = ast.parse(_parameters_cell(nbformat.read(path, as_version=4)).source)
    names = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            if node.value.value.lower().endswith(MODEL_SUFFIXES):
                names.extend(target.id for target in node.targets if isinstance(target, ast.Name))
    return names


# 04's own-teacher parameter defaults to None (stand-ins are made), so it is named here as well.
MISSING_MODEL_CASES = [(path, name) for path in NOTEBOOKS for name in _model_parameters(path)]
MISSING_MODEL_CASES += [(path, "USER_TEACHER") for path in NOTEBOOKS if path.stem == "04_bring_your_own_teacher"]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """The repository seen through symlinks, with its own empty runs/ and tensorboard_logs/: the
    notebooks write there (they write relative to the repository root they find), never into the
    real repository, whose TensorBoard a user may be watching."""
    view = tmp_path_factory.mktemp("checkout")
    for entry in ROOT.iterdir():
        if entry.name not in ("runs", "tensorboard_logs", "notebooks", ".git"):
            (view / entry.name).symlink_to(entry)
    (view / "notebooks").mkdir()
    for entry in (ROOT / "notebooks").iterdir():
        (view / "notebooks" / entry.name).symlink_to(entry)
    return view


def _outputs_of_notebook_runs() -> dict:
    """{path: mtime} of what notebook runs would leave in the real repository."""
    found = {}
    for folder in ("runs", "tensorboard_logs"):
        for entry in (ROOT / folder).glob("notebook*"):
            found[entry] = max([entry.stat().st_mtime_ns] + [p.stat().st_mtime_ns for p in entry.rglob("*")])
    return found


def test_the_notebooks_of_issue_5_are_there():
    names = {path.stem for path in NOTEBOOKS}
    assert {"01_denoise_distillation", "03_deploy_tflite", "04_bring_your_own_teacher"} <= names
    for path in NOTEBOOKS:
        assert _model_parameters(path), f"{path.name}: no model path parameter for the missing-model test"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_top_to_bottom_in_quick_mode(path, checkout):
    # the kernel starts in notebooks/, as when a user opens the notebook in Jupyter
    before = _outputs_of_notebook_runs()
    nb = runner.execute(checkout / "notebooks" / path.name, quick=True, cwd=checkout / "notebooks", timeout=600)
    assert _outputs_of_notebook_runs() == before, "the notebook wrote into the repository's runs/ or tensorboard_logs/"
    assert list((checkout / "runs").glob("notebook*")) or list((checkout / "tensorboard_logs").glob("notebook*"))
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code), "a code cell was not executed"
    errors = [output for cell in code for output in cell.outputs if output.output_type == "error"]
    assert not errors, errors
    figures = [output for cell in code for output in cell.outputs if "image/png" in output.get("data", {})]
    assert figures, f"{path.name} drew no figure"
    text = "".join(output.get("text", "") for cell in code for output in cell.outputs)
    assert "Traceback" not in text


@pytest.mark.parametrize("cwd", ["", "notebooks"], ids=["from-repo-root", "from-notebooks"])
def test_setup_cell_finds_the_repository_from_either_folder(cwd, tmp_path):
    """The parameters and setup cells of 01, then a cell reporting where the kernel stands."""
    source = nbformat.read(ROOT / "notebooks" / "01_denoise_distillation.ipynb", as_version=4)
    code = [cell for cell in source.cells if cell.cell_type == "code"]
    setup = next(i for i, cell in enumerate(code) if "def repo_root" in cell.source)
    probe = nbformat.v4.new_code_cell("import kd_tf.images\nprint(Path.cwd(), Path(kd_tf.images.__file__).parent.parent)")
    trimmed = nbformat.v4.new_notebook(cells=code[:setup + 1] + [probe], metadata=source.metadata)
    path = tmp_path / "setup_only.ipynb"
    nbformat.write(trimmed, path)
    nb = runner.execute(path, quick=True, cwd=ROOT / cwd, timeout=300)
    printed = nb.cells[-1].outputs[0]["text"].split()
    assert [Path(p) for p in printed] == [ROOT, ROOT]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_missing_model_file_stops_with_a_clear_error(path, tmp_path, checkout):
    """Each model path parameter in turn names a missing file: the run stops in the first cell that
    loads it, with kd_tf's FileNotFoundError naming the file, not an error from deep in a library.
    One kernel serves a notebook's runs (runner.execute_each)."""
    parameters = [name for p, name in MISSING_MODEL_CASES if p == path]
    missing = tmp_path / "no_such_model.keras"
    runs = runner.execute_each(path, [{name: str(missing)} for name in parameters], quick=True, cwd=checkout,
                               timeout=300)
    assert len(runs) == len(parameters) > 0
    for parameter, (nb, error) in zip(parameters, runs):
        assert isinstance(error, CellExecutionError), f"{parameter}: the notebook ran on without the model file"
        assert error.ename == "FileNotFoundError", (parameter, error.ename)
        assert str(missing) in error.evalue and "does not exist" in error.evalue, (parameter, error.evalue)
        assert "site-packages" not in error.traceback, f"{parameter}: the error comes from deep inside a library"

        code = [cell for cell in nb.cells if cell.cell_type == "code" and "injected-parameters" not in _tags(cell)]
        failed = [i for i, cell in enumerate(code) if any(o.output_type == "error" for o in cell.outputs)]
        assert len(failed) == 1, (parameter, failed)
        cell = code[failed[0]]
        first_use = next(i for i, c in enumerate(code) if "parameters" not in _tags(c) and parameter in c.source)
        assert failed[0] == first_use or "loads-model" in _tags(cell), \
            f"the error surfaced in cell {failed[0]}, not in the first cell that loads {parameter}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_notebook_holds_a_full_run_of_its_own_code(path):
    """Refresh with `python notebooks/run.py notebooks/<name>.ipynb` after editing a notebook."""
    assert path.stat().st_size < MAX_COMMITTED_BYTES, f"{path.name} is {path.stat().st_size / 2**20:.1f} MB"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    run = nb.metadata.get(runner.METADATA_KEY, {})
    assert run.get("mode") == "full", "the committed outputs are not those of a full run by notebooks/run.py"
    assert run.get("code_sha256") == runner.code_sha256(nb), "the code changed since the committed outputs were made"
    assert run.get("dependencies_sha256") == runner.dependencies_sha256(nb), \
        "kd_tf (a module this notebook imports) or a model file it loads changed since the committed outputs were made"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), "not one top-to-bottom run"
    outputs = [output for cell in code for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure in the committed outputs"


def test_dependency_hash_follows_the_kd_tf_modules_and_models_a_notebook_uses(tmp_path):
    """The committed-outputs check above goes stale when kd_tf or a model changes, not only the cells."""
    import shutil

    shutil.copytree(ROOT / "kd_tf", tmp_path / "kd_tf", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "t.keras").write_bytes(b"weights v1")
    parameters = nbformat.v4.new_code_cell('TEACHER = "models/t.keras"', metadata={"tags": ["parameters"]})
    nb = nbformat.v4.new_notebook(cells=[parameters, nbformat.v4.new_code_cell(
        "%matplotlib inline\nif True:\n    %time x = 1\nfrom kd_tf.metrics import psnr")])
    modules = [p.relative_to(tmp_path).as_posix() for p in runner.kd_tf_modules(nb, tmp_path)]
    assert "kd_tf/metrics.py" in modules and "kd_tf/sr/jobs.py" not in modules
    dependency = next(p for p in modules if p not in ("kd_tf/__init__.py", "kd_tf/metrics.py"))  # imported by metrics
    hashes = [runner.dependencies_sha256(nb, tmp_path)]
    for changed in ("kd_tf/metrics.py", dependency, "kd_tf/sr/jobs.py", "models/t.keras"):
        with open(tmp_path / changed, "ab") as file:
            file.write(b"\n# changed\n")
        hashes.append(runner.dependencies_sha256(nb, tmp_path))
    assert hashes[1] != hashes[0] and hashes[2] != hashes[1], "a change to kd_tf the notebook runs went unseen"
    assert hashes[3] == hashes[2], "a module the notebook never imports made its outputs stale"
    assert hashes[4] != hashes[3], "a change to the model file the notebook loads went unseen"
