"""The package's layout rules (docs: shared/DESIGN.md, issue 19), checked on the source with `ast`.

- the core (kd_tf/*.py) imports no task package (kd_tf.denoise, kd_tf.gan, kd_tf.sr, kd_tf.diffusion);
- a task imports the core, never another task;
- job schemas (each task's config module) are imported by the job layer only, and the shared
  config module (kd_tf.config) by the job layer and the few lower modules listed below;
- export never imports training code; data never imports models.

Every import counts, the ones inside functions too. What cannot follow a rule yet is listed here
with its reason, never skipped silently.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kd_tf"
TASKS = ("kd_tf.denoise", "kd_tf.gan", "kd_tf.sr", "kd_tf.diffusion")
TASK_CONFIGS = tuple(f"{task}.config" for task in TASKS)

# Top-level modules of the job layer: they turn a verb and its YAML into a task's job, so they
# import every task. Everything else at the top level is the core.
JOB_LAYER_ENTRY = {
    "kd_tf.cli": "`python -m kd_tf VERB [--task ...]` dispatches each verb to its task's jobs and "
                 "registers every task's job schemas for `python -m kd_tf config`",
    "kd_tf.__main__": "runs kd_tf.cli",
}

# (core module, task package) pairs allowed against rule 1, with the reason.
CORE_IMPORTS_TASK = {
    ("kd_tf.model_io", "kd_tf.diffusion"): "load_model must register the custom layers of the task nets a "
        "saved model may hold (samplers, the denoiser's embedding) before Keras reads the file: Keras "
        "imports no module outside Keras to find a registered class",
}

# The job layer: the modules that may see a whole run config (a task's job schema).
JOB_MODULES = {"kd_tf.cli", *TASK_CONFIGS, "kd_tf.denoise.jobs", "kd_tf.denoise.export_job",
               "kd_tf.denoise.unlabeled", "kd_tf.gan.jobs", "kd_tf.sr.jobs", "kd_tf.diffusion.jobs"}

# Lower modules that import the shared kd_tf.config, with what they take from it and why.
SHARED_CONFIG_USERS = {
    "kd_tf.runs": "run folders and the optimizer from the shared sections (OutputConfig, TrainConfig), "
                  "never a whole job config: runs.py is the jobs' own helper",
    "kd_tf.distribute": "the STRATEGIES names that the config validates (a constant, no config object)",
}

EXPORT_MODULES = ("kd_tf.export", "kd_tf.fake_quant")
TRAINING_MODULES = ("kd_tf.distiller", "kd_tf.losses", "kd_tf.objectives", "kd_tf.schedules", "kd_tf.teacher_cache",
                    "kd_tf.callbacks", "kd_tf.runs", "kd_tf.distribute", *[f"{t}.jobs" for t in TASKS],
                    "kd_tf.denoise.export_job", "kd_tf.denoise.unlabeled", "kd_tf.diffusion.progressive",
                    "kd_tf.diffusion.model")
DATA_MODULES = ("kd_tf.images", "kd_tf.degradations", "kd_tf.photo_corpus", "kd_tf.digits")
MODEL_MODULES = ("kd_tf.model_io", "kd_tf.classifier", "kd_tf.layers", "kd_tf.distiller",
                 *[f"{t}.nets" for t in TASKS], "kd_tf.denoise.ffdnet", "kd_tf.denoise.inherit")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


PACKAGES = {module_name(path) for path in PACKAGE.rglob("__init__.py")}


def package_sources() -> dict[str, str]:
    return {module_name(path): path.read_text(encoding="utf-8") for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(module: str, source: str, is_package: bool = False) -> set[str]:
    """Every kd_tf module `source` imports, at any depth of the code; `from kd_tf.x import y` counts
    as importing kd_tf.x and kd_tf.x.y (y may be a module)."""
    found = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "kd_tf" or name.startswith("kd_tf.")}


def within(name: str, prefixes) -> str | None:
    """The prefix of `prefixes` that `name` is or lies under, else None."""
    return next((p for p in prefixes if name == p or name.startswith(p + ".")), None)


def layout_violations(sources: dict[str, str]) -> list[str]:
    """Every broken rule in `sources` ({module name: source}) that the lists above do not allow."""
    problems = []
    for module, source in sources.items():
        imported = imports_of(module, source, is_package=module in PACKAGES)
        own_task = within(module, TASKS)
        for name in sorted(imported):
            task = within(name, TASKS)
            if own_task is None and task is not None and module not in JOB_LAYER_ENTRY \
                    and (module, task) not in CORE_IMPORTS_TASK:
                problems.append(f"core module {module} imports task {name}")
            if own_task is not None and task is not None and task != own_task:
                problems.append(f"task module {module} imports another task: {name}")
            if within(name, TASK_CONFIGS) and module not in JOB_MODULES:
                problems.append(f"{module} imports job schemas ({name}) but is not in the job layer")
            if name == "kd_tf.config" and module not in JOB_MODULES and module not in SHARED_CONFIG_USERS \
                    and module != "kd_tf.config":
                problems.append(f"{module} imports kd_tf.config but is not in the job layer")
            if module in EXPORT_MODULES and within(name, TRAINING_MODULES):
                problems.append(f"export module {module} imports training code: {name}")
            if module in DATA_MODULES and within(name, MODEL_MODULES):
                problems.append(f"data module {module} imports models: {name}")
    return sorted(set(problems))


def test_the_layout_rules_hold():
    assert layout_violations(package_sources()) == []


def test_the_listed_exceptions_are_still_needed():
    """An exception whose import is gone must leave the list, so the list says what is true."""
    sources = package_sources()
    for (module, task) in CORE_IMPORTS_TASK:
        assert any(within(name, (task,)) for name in imports_of(module, sources[module])), (module, task)
    for module in SHARED_CONFIG_USERS:
        assert "kd_tf.config" in imports_of(module, sources[module]), module
    assert set(JOB_LAYER_ENTRY) <= set(sources) and JOB_MODULES <= set(sources)


@pytest.mark.parametrize("module, injected, expected", [
    ("kd_tf.losses", "def late():\n    from kd_tf.denoise.nets import build_unet\n", "core module kd_tf.losses imports task"),
    ("kd_tf.tiling", "import kd_tf.gan.jobs\n", "core module kd_tf.tiling imports task"),
    ("kd_tf.sr.jobs", "from kd_tf.denoise import jobs\n", "task module kd_tf.sr.jobs imports another task"),
    ("kd_tf.diffusion.jobs", "def f():\n    from ..gan.jobs import distill\n", "imports another task: kd_tf.gan.jobs"),
    ("kd_tf.metrics", "from kd_tf import config\n", "kd_tf.metrics imports kd_tf.config"),
    ("kd_tf.inference", "from kd_tf.denoise.config import DistillJobConfig\n", "imports job schemas"),
    ("kd_tf.export", "from kd_tf.distiller import Distiller\n", "export module kd_tf.export imports training"),
    ("kd_tf.images", "from kd_tf.denoise.nets import build_unet\n", "data module kd_tf.images imports models"),
])
def test_a_forbidden_import_is_caught(module, injected, expected):
    """The check can fail: each kind of forbidden import, added to a copy of the sources, is reported."""
    sources = package_sources()
    assert not layout_violations(sources)
    sources[module] = sources[module] + "\n" + injected
    assert any(expected in problem for problem in layout_violations(sources)), layout_violations(sources)
