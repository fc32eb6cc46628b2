"""Every recipe under configs/ loads into the job that its own comment runs it with, and passes that job's
validation: a typo, a stale key or a wrong task in a recipe fails here, not an hour into a training."""

import shlex
from pathlib import Path

import pytest

import kd_tf.denoise.config  # noqa: F401 - each task's config module adds its jobs to cfg.JOBS
import kd_tf.diffusion.config  # noqa: F401
import kd_tf.gan.config  # noqa: F401
import kd_tf.sr.config  # noqa: F401
from kd_tf import config as cfg

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def documented_job(path: Path) -> str | None:
    """The job of the first comment line `python -m kd_tf VERB [--task T] ... --config <this file>`."""
    relative = path.relative_to(ROOT).as_posix()
    for line in path.read_text().splitlines():
        if not line.lstrip().startswith("#") or "python -m kd_tf" not in line:
            continue
        words = shlex.split(line.split("python -m kd_tf", 1)[1].split("#")[0])
        if "--config" in words and words[words.index("--config") + 1] == relative:
            task = words[words.index("--task") + 1] if "--task" in words else None
            return f"{words[0]} --task {task}" if task and task != "denoise" else words[0]
    return None


def test_the_recipes_are_found():
    assert len(CONFIGS) >= 20 and ROOT / "configs" / "diffusion" / "distill.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_a_recipe_is_valid_for_the_job_its_comment_runs(path, monkeypatch, tmp_path):
    job = documented_job(path)
    assert job in cfg.JOBS, (f"{path.name}: no comment '# python -m kd_tf VERB [--task T] --config "
                             f"{path.relative_to(ROOT).as_posix()}' naming one of {sorted(cfg.JOBS)}")
    (tmp_path / "manifest.json").write_text("{}")   # a fetched photo corpus, as far as validation looks
    monkeypatch.setenv("KD_TF_PHOTOS", str(tmp_path))
    monkeypatch.chdir(ROOT)                     # recipes name files relative to the repository root
    cfg.load(cfg.JOBS[job], path).validate()
