"""Bad inputs: each one gets a one-line message (what, where, what is accepted) or is skipped and
counted; nothing crashes with a stack trace and nothing already written is lost.

docs/TROUBLESHOOTING.md lists every case with the test that covers it.
"""

import io
import os
from pathlib import Path
import subprocess
import tracemalloc

import cv2
import keras
import numpy as np
import pytest
from PIL import Image, ImageOps

from kd_tf import config as cfg
from kd_tf.denoise import config as denoise_config
from kd_tf import images, inference
from kd_tf.cli import main
from kd_tf.distiller import Distiller
from kd_tf.model_io import load_model
from kd_tf.denoise.nets import build_unet

RNG = np.random.default_rng(0)
PHOTO = RNG.integers(0, 256, (48, 80, 3), np.uint8)


def _jpeg_bytes(array=PHOTO, **save):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=100, **save)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny 3-channel teacher and student on disk, plus a 1-channel teacher."""
    folder = tmp_path_factory.mktemp("models")
    build_unet((8, 16), 1, name="teacher").save(folder / "teacher.keras")
    build_unet((4, 8), 1, name="student").save(folder / "student.keras")
    build_unet((8, 16), 1, channels=1, name="gray_teacher").save(folder / "gray_teacher.keras")
    return folder


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Three small but usable training photos (64 px, the patch size of the tiny config)."""
    folder = tmp_path_factory.mktemp("photos")
    for name in ("a", "b", "c"):
        cv2.imwrite(str(folder / f"{name}.png"), RNG.integers(0, 256, (72, 80, 3), np.uint8))
    return folder


def _tiny_config(tmp_path, **extra):
    """A distill config that would train in seconds; the bad value is what the test adds."""
    text = ("data: {patch_size: 64, batch_size: 2, val_crop: 32, val_crops_per_image: 1}\n"
            "train: {steps: 2, steps_per_epoch: 2, mixed_precision: false}\n"
            "student: {family: unet, widths: [4, 8], blocks: 1}\n"
            "distill: {compare_scratch: false}\n"
            "eval: {sigmas: [25], baselines: [], max_images: 1, timing_size: 64}\n"
            "export_formats: []\n"
            f"output: {{runs_dir: {tmp_path / 'runs'}, log_dir: {tmp_path / 'tb'}}}\n")
    path = tmp_path / "tiny.yaml"
    path.write_text(text + "".join(f"{key}: {value}\n" for key, value in extra.items()))
    return path


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def _deny_writes_under(folder: Path, monkeypatch):
    """Every write under `folder` fails with EACCES as a read-only folder answers it: opening for
    writing, creating a folder, os.access(W_OK). Needs no privilege, so it runs everywhere."""
    import builtins
    import errno
    import io

    def inside(path):
        return isinstance(path, (str, bytes, os.PathLike)) and \
            Path(os.fsdecode(path)).absolute().is_relative_to(folder.absolute())

    def denied(path):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

    real_open, real_mkdir, real_access, real_os_open = io.open, os.mkdir, os.access, os.open

    def open_(file, mode="r", *args, **kwargs):
        if inside(file) and any(flag in mode for flag in "wax+"):
            raise denied(file)
        return real_open(file, mode, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if inside(path) and Path(os.fsdecode(path)).parent.is_dir():    # a missing parent fails as it would
            raise denied(path)
        return real_mkdir(path, *args, **kwargs)

    def access(path, mode, *args, **kwargs):
        return False if inside(path) and mode & os.W_OK else real_access(path, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise denied(path)
        return real_os_open(path, flags, *args, **kwargs)

    for module, name, function in ((io, "open", open_), (builtins, "open", open_), (os, "mkdir", mkdir),
                                   (os, "access", access), (os, "open", os_open)):
        monkeypatch.setattr(module, name, function)


@pytest.fixture(params=["filesystem", "injected"])
def read_only_folder(tmp_path, request, monkeypatch):
    """A folder nobody may write to, root included: a real one (chmod, and chattr +i for root,
    which chmod does not stop) where the machine allows it, and always one whose writes are
    refused by injection, so the behaviour is tested even as root without chattr."""
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "keep.txt").write_text("written before")
    if request.param == "injected":
        with monkeypatch.context() as patch:
            _deny_writes_under(folder, patch)
            yield folder
        assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]
        return
    folder.chmod(0o555)
    immutable = False
    if os.access(folder, os.W_OK):
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        if not immutable or os.access(folder, os.W_OK):
            # no real read-only folder here (root without chattr): refuse the writes by injection
            # instead of skipping, so this variant still tests the behaviour
            folder.chmod(0o755)
            with monkeypatch.context() as patch:
                _deny_writes_under(folder, patch)
                yield folder
            assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]
            return
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)
    assert (folder / "keep.txt").read_text() == "written before"
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]


# ---------------------------------------------------------------------------------------------
# Image files


def test_zero_byte_file(tmp_path, caplog):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(images.ImageReadError, match=r"empty.png: empty file \(0 bytes\); accepted: PNG, JPEG"):
        images.read_image(tmp_path / "empty.png")
    cv2.imwrite(str(tmp_path / "good.png"), PHOTO)
    with caplog.at_level("WARNING"):
        assert list(images.read_image_folder(tmp_path)) == ["good.png"]
    assert "skipped 1 of 2 files" in caplog.text and "empty file" in caplog.text


@pytest.mark.parametrize("extension", [".jpg", ".png"])
def test_truncated_jpeg_and_png(tmp_path, extension):
    whole = cv2.imencode(extension, PHOTO)[1].tobytes()
    for cut in (0.5, 0.99):
        (tmp_path / f"cut{extension}").write_bytes(whole[:int(len(whole) * cut)])
        kind = "JPEG" if extension == ".jpg" else "PNG"
        with pytest.raises(images.ImageReadError, match=f"cut{extension}: not a readable image: the {kind} is truncated"):
            images.read_image(tmp_path / f"cut{extension}")


def test_text_file_named_png(tmp_path, models, capsys):
    (tmp_path / "notes.png").write_text("shopping list: milk, eggs\n")
    with pytest.raises(images.ImageReadError, match=r"notes.png: not a readable image: it holds text, not image "
                                                  r"data \(starts with 'shopping list.*accepted: PNG"):
        images.read_image(tmp_path / "notes.png")
    code = main(["denoise", "--model", str(models / "student.keras"), "--input", str(tmp_path / "notes.png"),
                 "--output", str(tmp_path / "out")])
    assert code == 1                                            # skipped and counted; nothing was denoised
    assert "none of the 1 input file(s) could be denoised" in _one_line_error(capsys)


def test_16bit_png_keeps_its_precision_in_and_out(tmp_path, models):
    deep = RNG.integers(0, 65536, (24, 40, 3), np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    image = images.read_image(tmp_path / "deep.png")
    np.testing.assert_array_equal(image, (deep[..., ::-1] / np.float32(65535)).astype(np.float32))
    result = inference.denoise_path(models / "student.keras", tmp_path / "deep.png", tmp_path / "out", progress=False)
    assert cv2.imread(result["written"][0], cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_grayscale_is_read_as_rgb_and_denoised_back_to_gray(tmp_path, models):
    gray = RNG.integers(0, 256, (30, 50), np.uint8)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    image = images.read_image(tmp_path / "gray.png")
    assert image.shape == (30, 50, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    result = inference.denoise_path(models / "student.keras", tmp_path / "gray.png", tmp_path / "out", progress=False)
    assert cv2.imread(result["written"][0], cv2.IMREAD_UNCHANGED).shape == (30, 50)


def test_rgba_alpha_is_dropped_for_training_and_kept_by_denoise(tmp_path, models):
    rgba = RNG.integers(0, 256, (20, 28, 4), np.uint8)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    assert images.read_image(tmp_path / "rgba.png").shape == (20, 28, 3)
    result = inference.denoise_path(models / "student.keras", tmp_path / "rgba.png", tmp_path / "out", progress=False)
    written = cv2.imread(result["written"][0], cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(written[..., 3], rgba[..., 3])


def test_palette_png_expands_to_its_colors(tmp_path):
    palette = Image.fromarray(PHOTO).convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.save(tmp_path / "palette.png")
    expected = np.asarray(palette.convert("RGB"), np.float32) / 255
    np.testing.assert_array_equal(images.read_image(tmp_path / "palette.png"), expected)
    palette.save(tmp_path / "transparent.png", transparency=0)       # a tRNS chunk: becomes RGBA
    with_alpha = images.read_image(tmp_path / "transparent.png", keep_alpha=True)
    np.testing.assert_array_equal(with_alpha[..., :3], expected)
    assert set(np.unique(with_alpha[..., 3])) <= {0.0, 1.0}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotated_jpeg_is_read_upright(tmp_path, orientation):
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = orientation
    raw = _jpeg_bytes(exif=exif.tobytes())
    (tmp_path / "photo.jpg").write_bytes(raw)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(raw))), np.float32) / 255
    image = images.read_image(tmp_path / "photo.jpg")
    assert image.shape == upright.shape == ((80, 48, 3) if orientation >= 5 else (48, 80, 3))
    assert np.abs(image - upright).max() <= 2 / 255                  # two JPEG decoders, one picture


@pytest.mark.parametrize("kind", ["PNG", "WEBP", "TIFF"])
def test_exif_orientation_in_png_webp_tiff(tmp_path, kind):
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6                                                  # rotate 90 degrees clockwise
    Image.fromarray(PHOTO).save(tmp_path / "photo.img", kind, exif=exif.tobytes(),
                                **({"lossless": True} if kind == "WEBP" else {}))
    np.testing.assert_array_equal(images.read_image(tmp_path / "photo.img"), np.rot90(PHOTO, -1) / np.float32(255))


def test_image_smaller_than_patch_size(tmp_path, models, caplog):
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "big.png"), RNG.integers(0, 256, (70, 70, 3), np.uint8))
    cv2.imwrite(str(folder / "tiny.png"), RNG.integers(0, 256, (40, 90, 3), np.uint8))
    with caplog.at_level("WARNING"):
        assert list(images.read_image_folder(folder, min_size=64)) == ["big.png"]
    assert "skipped 1 of 2 files" in caplog.text and "tiny.png: 90x40 is smaller than 64 px" in caplog.text
    with pytest.raises(ValueError, match="smaller than patch_size=64"):
        images.patch_dataset([np.zeros((40, 90, 3), np.float32)], patch_size=64)
    # at inference any size works, down to one pixel, for dynamic and for fixed-shape models
    keras_runner = inference.load_runner(models / "student.keras")
    identity = inference.Runner(lambda batch: batch.copy(), tile=16)
    for height, width in ((1, 1), (1, 7), (3, 5), (9, 8), (17, 40)):
        image = RNG.random((height, width, 3), np.float32)
        assert inference.run_rgb(keras_runner, image).shape == (height, width, 3)
        np.testing.assert_allclose(inference.run_rgb(identity, image, overlap=8), image, atol=1e-6)


def test_huge_image_runs_in_bounded_tiles_and_memory():
    """The 10000x10000 case scaled down for the suite (docs/TROUBLESHOOTING.md has the real run):
    the model never sees more than (max_tile + 2 margin)^2 pixels per call, and the numpy buffers
    stay a small multiple of the image."""
    shapes = []

    def identity(batch):
        shapes.append(batch.shape)
        return batch.copy()

    runner = inference.Runner(identity, margin=40)
    raw = RNG.integers(0, 256, (2500, 3100, 3), np.uint8)
    tracemalloc.start()
    out = inference.denoise_array(runner, raw, max_tile=512)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(shapes) == 5 * 7
    assert max(s[1] for s in shapes) <= 512 + 2 * 40 and max(s[2] for s in shapes) <= 512 + 2 * 40
    np.testing.assert_array_equal(out, raw[..., ::-1] / np.float32(255))   # every pixel once, in place
    float_image = raw.size * 4
    assert peak < 2.5 * float_image, f"peak {peak / 2**20:.0f} MiB for a {float_image / 2**20:.0f} MiB image"


# ---------------------------------------------------------------------------------------------
# Data folders


def test_empty_data_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no photos here")
    code = main(["train-teacher", "--data", str(tmp_path / "empty"), "--set", f"output.runs_dir={tmp_path}/runs",
                 "--set", f"output.log_dir={tmp_path}/tb"])
    assert code == 2
    line = _one_line_error(capsys)
    assert "no image files in" in line and "1 file(s) with other extensions" in line and ".png" in line


def test_folder_with_no_readable_image(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_text("not a picture")
    (folder / "b.jpg").write_bytes(b"")
    code = main(["train-teacher", "--data", str(folder), "--set", f"output.runs_dir={tmp_path}/runs",
                 "--set", f"output.log_dir={tmp_path}/tb"])
    assert code == 2
    line = _one_line_error(capsys)
    assert "no readable images" in line and "all 2 image file(s) were skipped" in line


# ---------------------------------------------------------------------------------------------
# Teacher and student models


def test_missing_teacher_file(tmp_path, photo_folder, capsys):
    code = main(["distill", "--config", str(_tiny_config(tmp_path)), "--data", str(photo_folder),
                 "--teacher", str(tmp_path / "nowhere.keras")])
    assert code == 2
    assert "does not exist" in _one_line_error(capsys)


@pytest.mark.parametrize("kind, message", [
    ("empty.keras", r"is an empty file \(0 bytes\)"),
    ("junk.keras", "is not a .keras archive"),
    ("truncated.keras", "is not a .keras archive"),
    ("junk.h5", "is not an HDF5 file"),
    ("truncated.h5", r"cannot load model .*truncated file"),
    ("savedmodel", "cannot load model .*Wire format was corrupt"),
    ("junk.tflite", "cannot load .* as a TFLite model"),
])
def test_corrupt_teacher_file(tmp_path, models, photo_folder, kind, message, capsys):
    path = tmp_path / kind
    if kind == "savedmodel":
        path.mkdir()
        (path / "saved_model.pb").write_bytes(b"\x08\x01 not a protobuf of a model")
    elif kind == "truncated.h5":
        build_unet((4, 8), 1).save(path)
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    else:
        real = (models / "teacher.keras").read_bytes()
        path.write_bytes({"empty.keras": b"", "truncated.keras": real[:len(real) // 2]}.get(kind, b"junk " * 100))
    with pytest.raises(ValueError, match=message):
        inference.load_runner(path)
    code = main(["denoise", "--model", str(path), "--input", str(photo_folder), "--output", str(tmp_path / "out")])
    assert code == 2
    assert str(path) in _one_line_error(capsys)
    if kind.endswith(".keras"):
        code = main(["distill", "--config", str(_tiny_config(tmp_path)), "--data", str(photo_folder),
                     "--teacher", str(path)])
        assert code == 2
        assert str(path) in _one_line_error(capsys)


def test_teacher_student_shape_mismatch(tmp_path, models, photo_folder, capsys):
    with pytest.raises(ValueError, match="teacher takes 1 input channels, student takes 3"):
        Distiller(load_model(models / "gray_teacher.keras"), build_unet((4, 8), 1))
    code = main(["distill", "--config", str(_tiny_config(tmp_path)), "--data", str(photo_folder),
                 "--teacher", str(models / "gray_teacher.keras")])
    assert code == 2
    assert "teacher takes 1 input channels, student takes 3" in _one_line_error(capsys)
    code = main(["denoise", "--model", str(models / "gray_teacher.keras"), "--input", str(photo_folder),
                 "--output", str(tmp_path / "out")])
    assert code == 2
    assert "takes 1-channel input" in _one_line_error(capsys)


def test_unknown_feature_layer_name(tmp_path, models, photo_folder, capsys):
    code = main(["distill", "--config", str(_tiny_config(tmp_path)), "--data", str(photo_folder),
                 "--teacher", str(models / "teacher.keras"), "--set", "distill.features=[[enc9, bottleneck, 0.1]]"])
    assert code == 2
    line = _one_line_error(capsys)
    assert "teacher has no layer named ['enc9']; available layers:" in line and "'bottleneck'" in line


def test_model_that_is_not_image_to_image(tmp_path):
    inputs = keras.Input((None, None, 3))
    keras.Model(inputs, keras.layers.Conv2D(3, 3, strides=2, padding="same")(inputs)).save(tmp_path / "half.keras")
    with pytest.raises(ValueError, match=r"returned shape \(1, 4, 4, 3\) for a 8x8 RGB input; expected an image "
                                         r"\(the same size, or an integer factor larger\)"):
        inference.load_runner(tmp_path / "half.keras")          # found on a probe, before any image is read


# ---------------------------------------------------------------------------------------------
# Config files


@pytest.mark.parametrize("extra, message", [
    ({"train": "{stepz: 5}"}, r"unknown key\(s\) \['stepz'\] in train; accepted: .*'steps'"),
    ({"bogus": 1}, r"unknown key\(s\) \['bogus'\] in config"),
    ({"train": "{steps: ten}"}, "train.steps='ten' is not accepted: wrong type str; expected an int"),
    ({"train": "{mixed_precision: maybe}"}, "train.mixed_precision='maybe' .* expected auto .*true/bfloat16, float16 .*false/float32"),
    ({"student": "{widths: 12}"}, "student.widths=12 .* expected a list of ints"),
    ({"distill": "{student_loss_weight: {start: 1.5}}"}, r"distill.student_loss_weight.start=1.5 is not accepted; expected 0 <= value <= 1"),
    ({"distill": "{student_loss_weight: {kind: linear, start: 0.1, end: -0.1}}"}, "distill.student_loss_weight.end=-0.1"),
    ({"data": "{sigma_min: -5}"}, r"data.sigma_min/sigma_max=\(-5.0, 55.0\) is not accepted"),
    ({"data": "{val_sigma: -1}"}, "data.val_sigma=-1.0 is not accepted"),
    ({"eval": "{sigmas: [-25]}"}, r"eval.sigmas=\[-25.0\] is not accepted; expected floats in \(0, 255\]"),
])
def test_config_unknown_key_wrong_type_out_of_range(tmp_path, capsys, extra, message):
    path = _tiny_config(tmp_path, **extra)
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.load(denoise_config.DistillJobConfig, path)
    assert main(["distill", "--config", str(path)]) == 2
    assert "error: " in _one_line_error(capsys)
    assert not (tmp_path / "runs").exists()                     # refused before anything is written


def test_config_that_is_not_yaml_or_not_a_mapping(tmp_path, capsys):
    (tmp_path / "broken.yaml").write_text("train: {steps: 5\n")
    with pytest.raises(cfg.ConfigError, match="broken.yaml' is not valid YAML"):
        cfg.load(denoise_config.DistillJobConfig, tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- steps\n")
    with pytest.raises(cfg.ConfigError, match="holds a list; expected a mapping"):
        cfg.load(denoise_config.DistillJobConfig, tmp_path / "list.yaml")
    with pytest.raises(SystemExit, match="not valid YAML"):
        main(["distill", "--set", "eval.sigmas=[15, 25"])
    assert cfg.load(denoise_config.DistillJobConfig, None, {"train.learning_rate": "5e-4"}).train.learning_rate == 5e-4


# ---------------------------------------------------------------------------------------------
# Outputs


def test_output_path_inside_a_read_only_folder(tmp_path, read_only_folder, models, photo_folder, capsys):
    code = main(["denoise", "--model", str(models / "student.keras"), "--input", str(photo_folder),
                 "--output", str(read_only_folder / "out")])
    assert code == 2
    assert "cannot write to the output folder" in _one_line_error(capsys)
    code = main(["distill", "--config", str(_tiny_config(tmp_path, save_to=read_only_folder / "s.keras")),
                 "--data", str(photo_folder), "--teacher", str(models / "teacher.keras")])
    assert code == 2                                            # refused before training, not after
    assert "save_to=" in _one_line_error(capsys) and not (tmp_path / "runs").exists()
    code = main(["train-teacher", "--data", str(photo_folder), "--set", f"output.runs_dir={read_only_folder}/runs"])
    assert code == 2
    assert f"cannot access '{read_only_folder}/runs'" in _one_line_error(capsys)


def test_outputs_never_overwrite_inputs_or_earlier_files(tmp_path, models, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), PHOTO)
    original = (folder / "a.png").read_bytes()
    result = inference.denoise_path(models / "student.keras", folder, folder, progress=False)
    assert result["written"] == [] and "would overwrite this input" in result["skipped"][str(folder / "a.png")]
    assert (folder / "a.png").read_bytes() == original
    # an interrupted write leaves the earlier complete file, and no half file
    out = tmp_path / "out" / "a.png"
    images.write_image(out, np.zeros((4, 4, 3)))
    before = out.read_bytes()
    monkeypatch.setattr(cv2, "imwrite", lambda path, image: open(path, "wb").write(b"half") and False)
    with pytest.raises(OSError, match="could not write"):
        images.write_image(out, np.ones((4, 4, 3)))
    assert out.read_bytes() == before and sorted(p.name for p in out.parent.iterdir()) == ["a.png"]
