"""Any image-to-image teacher through the Python API: 2x super-resolution (an output larger than the
input, through the teacher cache too), deblurring and JPEG artefact removal as degradations of
the same abstraction."""

import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf

import kd_tf.degradations
import kd_tf.denoise.nets
import kd_tf.inference
import kd_tf.int8_parity
import kd_tf.sr.nets
import kd_tf.tiling
from kd_tf import Distiller
from kd_tf.images import patch_dataset
from kd_tf.degradations import JPEG, AlreadyDegraded, Downscale, GaussianBlur, GaussianNoise, from_config
from kd_tf.errors import InputError
from kd_tf.denoise.nets import build_unet
from kd_tf.sr import build_upscaler
from kd_tf.teacher_cache import cache_teacher_outputs


@pytest.fixture(scope="module")
def photos():
    rng = np.random.default_rng(0)
    smooth = [np.clip(tf.image.resize(rng.random((6, 6, 3)), (48, 48), "bicubic").numpy(), 0, 1) for _ in range(3)]
    return [image.astype(np.float32) for image in smooth]


def _psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def test_downscale_is_bicubic_with_antialiasing_and_sr_patches_pair_up(photos):
    clean = photos[0]
    expected = tf.image.resize(clean, (24, 24), method="bicubic", antialias=True).numpy()
    np.testing.assert_allclose(Downscale(2).apply(clean, [0, 0]).numpy(), expected, atol=1e-6)
    low, high = next(iter(patch_dataset(photos, 16, 4, degradation=Downscale(2), seed=3)))
    assert low.shape == (4, 8, 8, 3) and high.shape == (4, 16, 16, 3)
    np.testing.assert_allclose(low, tf.image.resize(high, (8, 8), method="bicubic", antialias=True), atol=1e-5)
    with pytest.raises(InputError, match="not divisible"):
        patch_dataset(photos, 15, 4, degradation=Downscale(2))


def test_each_degradation_does_what_it_says_and_repeats_with_its_seed(photos):
    texture = np.random.default_rng(5).random((48, 48, 3)).astype(np.float32)
    blurred = GaussianBlur(2.0).apply(texture, [1, 1]).numpy()
    # blur removes high frequencies: the Laplacian's energy falls
    laplacian = lambda x: np.abs(x[1:-1, 1:-1] * 4 - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]).mean()  # noqa
    assert laplacian(blurred) < 0.2 * laplacian(texture)
    assert abs(blurred.mean() - texture.mean()) < 0.01                 # a normalised kernel keeps brightness
    clean = photos[1]
    jpeg = JPEG(10).apply(clean, [1, 1]).numpy()
    assert 20 < _psnr(jpeg, clean) < 45                                # lossy, not destroyed
    noisy = GaussianNoise(25).apply(clean, [1, 2]).numpy()
    assert np.std(noisy - clean) * 255 == pytest.approx(25, rel=0.1)
    np.testing.assert_array_equal(noisy, GaussianNoise(25).apply(clean, [1, 2]).numpy())
    assert not np.array_equal(noisy, GaussianNoise(25).apply(clean, [1, 3]).numpy())
    np.testing.assert_array_equal(AlreadyDegraded().apply(clean), clean)
    assert repr(from_config({"kind": "jpeg", "quality_min": 20, "quality_max": 40})) == \
        "JPEG(quality_min=20, quality_max=40)"
    with pytest.raises(InputError, match="accepted: noise, blur, downscale, jpeg, none"):
        from_config({"kind": "rain"})
    with pytest.raises(InputError, match="1 <= min <= max <= 100"):
        JPEG(0)


def _train(distiller, data, steps):
    distiller.compile(optimizer=keras.optimizers.Adam(3e-3))
    return distiller.fit(data, epochs=1, steps_per_epoch=steps, verbose=0).history


def test_a_2x_sr_teacher_teaches_a_smaller_student_live_and_from_the_cache(photos):
    keras.utils.set_random_seed(0)
    teacher, student = build_upscaler(16, 2, 2, name="teacher"), build_upscaler(4, 1, 2, name="student")
    data = patch_dataset(photos, 16, 4, degradation=Downscale(2), seed=1)
    low, high = next(iter(data))
    distiller = Distiller(teacher, student, student_loss_weight=0.5, probe_size=8)
    before = [w.copy() for w in teacher.get_weights()]
    distiller.compile(optimizer="adam")
    first = distiller.evaluate(low, high, verbose=0, return_dict=True)
    history = _train(distiller, data, 20)
    assert all(np.array_equal(a, b) for a, b in zip(before, teacher.get_weights()))
    assert history["loss"][-1] < first["loss"]
    assert student(low).shape == (4, 16, 16, 3)

    cache = cache_teacher_outputs(teacher, data.map(lambda x, y: (x, y)), 3)
    assert cache.inputs.shape[1:] == (8, 8, 3) and cache.teacher_outputs.shape[1:] == (16, 16, 3)
    plain_x, _ = next(iter(cache.dataset(4, seed=0, augment=False)))
    np.testing.assert_allclose(plain_x["teacher_outputs"], teacher(plain_x["inputs"]), atol=2e-2)   # float16 bank
    batch_x, batch_y = next(iter(cache.dataset(4, seed=0)))
    # flips and turns move the small input and the large target alike: the input is still the
    # target's bicubic downscale (the dihedral moves commute with it)
    np.testing.assert_allclose(batch_x["inputs"], Downscale(2).apply(batch_y), atol=3e-3)
    assert batch_y.shape == (4, 16, 16, 3)
    cached = Distiller(teacher, build_upscaler(4, 1, 2, name="student2"), student_loss_weight=0.5, probe_size=8)
    assert np.isfinite(_train(cached, cache.dataset(4, seed=0), 3)["loss"][-1])


def test_the_distiller_refuses_a_student_of_another_scale():
    teacher, student = build_upscaler(8, 1, 2), build_unet((4, 8), 1)
    with pytest.raises(ValueError, match="output shape"):
        Distiller(teacher, student, probe_size=8)


@pytest.mark.parametrize("degradation", [GaussianBlur(1.0, 2.0, noise_sigma=2.0), JPEG(10, 30)],
                         ids=["deblurring", "jpeg"])
def test_restoration_pairs_train_through_the_same_distiller(photos, degradation):
    keras.utils.set_random_seed(0)
    teacher, student = build_unet((8, 16), 1, name="teacher"), build_unet((4, 8), 1, name="student")
    data = patch_dataset(photos, 16, 4, degradation=degradation, seed=2)
    degraded, clean = next(iter(data))
    assert degraded.shape == clean.shape and _psnr(degraded, clean) < 40
    distiller = Distiller(teacher, student, student_loss_weight=1.0)
    distiller.compile(optimizer=keras.optimizers.Adam(3e-3))
    before = distiller.evaluate(degraded, clean, verbose=0, return_dict=True)["own"]
    distiller.fit(data, epochs=1, steps_per_epoch=25, verbose=0)
    assert distiller.evaluate(degraded, clean, verbose=0, return_dict=True)["own"] < before


@pytest.mark.parametrize("module", [kd_tf.degradations, kd_tf.sr.nets, kd_tf.tiling, kd_tf.int8_parity,
                                    kd_tf.inference, kd_tf.denoise.nets])
def test_docstring_examples_run(module):
    failed, tried = doctest.testmod(module)
    assert tried and not failed


def _repeat2(batch):
    return np.repeat(np.repeat(np.asarray(batch), 2, axis=1), 2, axis=2)


@pytest.mark.parametrize("tile, max_tile", [(None, 1024), (None, 8), (16, 1024)],
                         ids=["whole", "cropped-dynamic", "fixed-tiles"])
def test_upscaling_inference_tiles_any_size_without_seams(tile, max_tile):
    """A 2x model whose output pixel depends on one input pixel (nearest-neighbour): tiles, crops
    and blending must give exactly the whole-image result, for any image size."""
    from kd_tf.inference import Runner, run_rgb

    image = np.random.default_rng(1).random((37, 23, 3)).astype(np.float32)
    runner = Runner(_repeat2, stride=1, tile=tile, margin=0, scale=2)
    out = run_rgb(runner, image, overlap=4, max_tile=max_tile)
    np.testing.assert_allclose(out, _repeat2(image[None])[0], atol=1e-5)


def test_upscale_verb_writes_larger_images_and_refuses_a_denoiser(tmp_path):
    from kd_tf.cli import main
    from kd_tf.images import read_image, write_image

    keras.utils.set_random_seed(0)
    upscaler = build_upscaler(4, 1, 2)
    upscaler.save(tmp_path / "sr.keras")
    build_unet((4, 8), 1).save(tmp_path / "denoiser.keras")
    image = np.random.default_rng(2).random((21, 30, 3)).astype(np.float32)
    write_image(tmp_path / "in" / "a.png", image)
    assert main(["upscale", "--model", str(tmp_path / "sr.keras"), "--input", str(tmp_path / "in"),
                 "--output", str(tmp_path / "out")]) == 0
    out = read_image(tmp_path / "out" / "a.png")
    expected = np.clip(upscaler(read_image(tmp_path / "in" / "a.png")[None]).numpy()[0], 0, 1)
    assert out.shape == (42, 60, 3) and np.abs(out - expected).max() <= 1 / 255 + 1e-6
    import json
    report = json.loads((tmp_path / "out" / "upscale_report.json").read_text())   # named by its verb
    assert report["job"] == "upscale" and report["written"] == 1
    assert not (tmp_path / "out" / "denoise_report.json").exists()
    assert main(["upscale", "--model", str(tmp_path / "denoiser.keras"), "--input", str(tmp_path / "in"),
                 "--output", str(tmp_path / "out2")]) == 2


def test_evaluation_keeps_an_upscalers_whole_output():
    from kd_tf.inference import run_on_image

    keras.utils.set_random_seed(0)
    model = build_upscaler(4, 1, 2)
    image = np.random.default_rng(3).random((13, 11, 3)).astype(np.float32)
    out = run_on_image(model, image, stride=8)
    assert out.shape == (26, 22, 3)
    # away from the reflect-padded bottom/right border, it is the model on the image itself
    np.testing.assert_allclose(out[:14, :10], model(image[None]).numpy()[0, :14, :10], atol=1e-4)


def test_unlabeled_distillation_from_a_folder_reports_agreement_with_the_teacher(tmp_path, photos):
    import json

    from kd_tf.cli import main
    from kd_tf.images import write_image

    rng = np.random.default_rng(4)
    for index in range(5):                   # "camera noise": already in the files, no clean versions
        noisy = np.clip(np.tile(photos[index % 3], (2, 2, 1)) + rng.normal(0, 0.08, (96, 96, 3)), 0, 1)
        write_image(tmp_path / "mine" / f"photo{index}.png", noisy)
    keras.utils.set_random_seed(0)
    build_unet((8, 16), 1, name="teacher").save(tmp_path / "teacher.keras")
    code = main(["distill", "--unlabeled", "--data", str(tmp_path / "mine"), "--teacher", str(tmp_path / "teacher.keras"),
                 "--steps", "6", "--run-name", "unl", "--set", "train.steps_per_epoch=3",
                 "--set", "student={family: unet, widths: [4, 8], blocks: 1}", "--set", "distill.cache_batches=2",
                 "--set", "data={patch_size: 32, batch_size: 4, val_crop: 64, heldout_fraction: 0.4}",
                 "--set", f"output.runs_dir={tmp_path / 'runs'}", "--set", f"output.log_dir={tmp_path / 'tb'}"])
    assert code == 0
    report = json.loads((tmp_path / "runs" / "unl" / "report.json").read_text())
    assert report["job"] == "distill --unlabeled" and len(report["heldout"]) == 2
    assert set(report["agreement"]["images"]) == set(report["heldout"])
    assert not set(report["heldout"]) & set(report["train_photos"])
    mean = report["agreement"]["mean"]
    assert np.isfinite(mean["psnr"]) and -1 <= mean["ssim"] <= 1
    assert len(report["history"]["loss"]) == 2 and "val_psnr" in report["history"]
    assert report["history"]["own"] == [0.0, 0.0]                 # no clean truth: the teacher's outputs only
    assert (tmp_path / "runs" / "unl" / "split.json").is_file()


def test_a_fixed_size_teacher_teaches_patches_of_any_size_on_tiles(rng):
    from kd_tf.tiling import Tiled

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    pointwise = keras.Model(inputs, keras.layers.Conv2D(3, 1, name="mix")(inputs), name="fixed16")
    x = rng.random((2, 40, 24, 3)).astype(np.float32)
    tiled = Tiled(pointwise, overlap=4)
    # a 1x1 model's tiles agree wherever they overlap: the blend is the model on the whole image
    whole = np.einsum("bhwc,cd->bhwd", x, pointwise.get_layer("mix").kernel.numpy()[0, 0]) + pointwise.get_layer("mix").bias.numpy()
    np.testing.assert_allclose(tiled(x).numpy(), whole, atol=1e-5)
    np.testing.assert_allclose(tiled(x[:, :10, :7]).numpy(), whole[:, :10, :7], atol=1e-5)   # smaller than a tile
    with pytest.raises(ValueError, match="takes images of any size"):
        Tiled(build_unet((4, 8), 1))

    student = build_unet((4, 8), 1, name="student")
    distiller = Distiller(pointwise, student, student_loss_weight=0.0, probe_size=32)   # no raw Keras error
    assert isinstance(distiller.teacher, Tiled)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    patches = rng.random((4, 32, 32, 3)).astype(np.float32)
    logs = distiller.evaluate(patches, verbose=0, return_dict=True)
    assert logs["distill"] == pytest.approx(np.mean((student(patches).numpy() - tiled(patches).numpy()) ** 2), rel=1e-4)


def test_a_one_channel_teacher_distils_through_the_cache_and_the_grids(tmp_path, rng):
    from kd_tf.callbacks import ImageGridCallback

    keras.utils.set_random_seed(0)
    teacher = build_unet((8, 16), 1, channels=1, name="teacher")
    student = build_unet((4, 8), 1, channels=1, name="student")
    gray = rng.random((8, 16, 16, 1)).astype(np.float32)
    cache = cache_teacher_outputs(teacher, tf.data.Dataset.from_tensor_slices((gray, gray)).batch(4), 2)
    assert cache.teacher_outputs.shape == (8, 16, 16, 1)
    distiller = Distiller(teacher, student, student_loss_weight=0.5, probe_size=16)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    grids = ImageGridCallback(gray[:2], gray[:2], tmp_path / "grids")
    history = distiller.fit(cache.dataset(4, seed=0), epochs=1, steps_per_epoch=2, verbose=0, callbacks=[grids])
    assert np.isfinite(history.history["loss"][0])
    grid = grids.grid(distiller.panels(gray[:2]))
    assert grid.shape == (1, 32, 4 * 16 + 3 * 2, 3)            # gray shown as RGB: input | teacher | student | clean
    sr_grid = ImageGridCallback(gray[:2, :8, :8], gray[:2], tmp_path / "sr").grid({"out": gray[:2]})
    assert sr_grid.shape == (1, 32, 3 * 16 + 2 * 2, 3)        # a small input is enlarged to the outputs' size


@pytest.fixture(scope="module")
def sr_cli(tmp_path_factory):
    """train-teacher / distill --task sr, a few steps each, on the embedded photos."""
    from kd_tf.cli import main

    root = tmp_path_factory.mktemp("sr_cli")
    common = ["--set", f"output.runs_dir={root / 'runs'}", "--set", f"output.log_dir={root / 'tb'}",
              "--set", f"data={{patch_size: 32, batch_size: 4, val_crop: 64, corpus_path: {root / 'no_corpus'}}}",
              "--set", "train.steps_per_epoch=2"]
    codes = {"teacher": main(["train-teacher", "--task", "sr", "--steps", "4", "--run-name", "teacher",
                              "--set", "net={width: 8, blocks: 1}", "--set", f"save_to={root / 'teacher.keras'}",
                              *common])}
    codes["distill"] = main(["distill", "--task", "sr", "--steps", "4", "--run-name", "distill",
                             "--teacher", str(root / "teacher.keras"), "--set", "student={width: 4, blocks: 1}",
                             "--set", "cache_batches=2", "--set", "calibration_batches=2", *common])
    return root, codes


def test_sr_cli_trains_distils_exports_and_scores_against_bicubic(sr_cli, tmp_path):
    import json

    from kd_tf.cli import main
    from kd_tf.images import load_split, to_8bit

    root, codes = sr_cli
    assert codes == {"teacher": 0, "distill": 0}
    report = json.loads((root / "runs" / "distill" / "report.json").read_text())
    methods = report["heldout1"]["methods"]
    assert set(methods) == {"bicubic", "teacher", "student (distilled)", "student int8 (TFLite)"}
    assert "heldout2" not in report                                # no corpus here
    heldout = load_split().heldout
    assert set(methods["bicubic"]["images"]) == set(heldout)
    # the bicubic row, recomputed by hand on one photo
    name, photo = sorted(heldout.items())[0]
    truth = to_8bit(photo[:photo.shape[0] // 2 * 2, :photo.shape[1] // 2 * 2])
    small = to_8bit(tf.image.resize(truth, (truth.shape[0] // 2, truth.shape[1] // 2), "bicubic", antialias=True).numpy())
    up = to_8bit(tf.image.resize(small, truth.shape[:2], "bicubic").numpy())
    assert methods["bicubic"]["images"][name]["psnr"] == pytest.approx(_psnr(up, truth), abs=1e-3)
    assert report["models"]["teacher"]["macs_512"] > report["models"]["student (distilled)"]["macs_512"]
    tflite = report["int8_tflite"]
    from kd_tf.export import check_builtin_only
    ops = check_builtin_only(open(tflite, "rb").read())              # raises on a Flex or custom op
    assert {"DEPTH_TO_SPACE", "RESIZE_BILINEAR", "CONV_2D"} <= set(ops) and "QUANTIZE" in ops
    assert main(["upscale", "--model", tflite, "--input", str(tmp_path / "none"), "--output", str(tmp_path / "o")]) == 2
    parity = report["int8_parity"]                                   # the colour set and the held-out photos
    assert set(parity["sets"]) == {"colour", "heldout1"} and "heldout2" in parity["skipped"]
    row = parity["sets"]["heldout1"]["per_image"][name]
    assert row["psnr_float"] == pytest.approx(methods["student (distilled)"]["images"][name]["psnr"], abs=1e-3)
    assert row["psnr_int8"] == pytest.approx(methods["student int8 (TFLite)"]["images"][name]["psnr"], abs=1e-3)
    sensitivity = {row["tensor"]: row for row in report["int8_sensitivity"]["rows"]}   # the same images, per tensor
    assert {"all tensors", "weights only", "head", "subpixel", "bilinear"} <= set(sensitivity)
    parity_images = {f"{s}/{n}" for s in parity["sets"] for n in parity["sets"][s]["per_image"]}
    assert set(sensitivity["head"]["per_input_db"]) == parity_images
    assert "which tensor costs the int8 model what" in report["table"]


def test_sr_cli_evaluates_and_exports_an_upscaler_on_its_own_protocol(sr_cli, tmp_path):
    """`evaluate --task sr` scores saved upscalers (Keras and TFLite) against bicubic; `export` of an
    upscaler (recognized without --task) writes every format and scores each the same way."""
    import json

    from kd_tf.cli import main
    from kd_tf.export import check_builtin_only
    from kd_tf.images import load_split, to_8bit

    root, _ = sr_cli
    distilled = json.loads((root / "runs" / "distill" / "report.json").read_text())
    settings = ["--set", f"output.runs_dir={tmp_path / 'runs'}", "--set", f"output.log_dir={tmp_path / 'tb'}",
                "--set", f"data={{patch_size: 32, batch_size: 4, corpus_path: {root / 'no_corpus'}}}"]
    assert main(["evaluate", "--task", "sr", "--teacher", str(root / "teacher.keras"), "--student",
                 f"float={distilled['student_path']}", "--student", f"int8={distilled['int8_tflite']}",
                 "--run-name", "evaluate", *settings]) == 0
    evaluated = json.loads((tmp_path / "runs" / "evaluate" / "report.json").read_text())["heldout1"]["methods"]
    for mine, theirs in (("teacher", "teacher"), ("float", "student (distilled)"), ("int8", "student int8 (TFLite)"),
                         ("bicubic", "bicubic")):
        assert evaluated[mine]["psnr"] == pytest.approx(distilled["heldout1"]["methods"][theirs]["psnr"], abs=1e-3)

    # an upscaler whose function is known: its detail branch zeroed, it is bilinear enlargement
    known = build_upscaler(4, 1, 2)
    known.get_layer("to_subpixels").set_weights([np.zeros_like(w) for w in known.get_layer("to_subpixels").get_weights()])
    known.save(tmp_path / "bilinear.keras")
    assert main(["export", "--model", str(tmp_path / "bilinear.keras"), "--out", str(tmp_path / "export"),
                 "--run-name", "export", "--set", "calibration_batches=2", *settings]) == 0
    exported = json.loads((tmp_path / "runs" / "export" / "export_report.json").read_text())
    assert exported["job"] == "export --task sr" and set(exported["files"]) == {"keras", "savedmodel", "float32",
                                                                               "dynamic", "int8"}
    methods = exported["heldout1"]["methods"]
    name, photo = sorted(load_split().heldout.items())[0]        # the protocol by hand: 8-bit truth and input
    truth = to_8bit(photo[:photo.shape[0] // 2 * 2, :photo.shape[1] // 2 * 2])
    small = to_8bit(tf.image.resize(truth, (truth.shape[0] // 2, truth.shape[1] // 2), "bicubic", antialias=True).numpy())
    bilinear = _psnr(to_8bit(tf.image.resize(small, truth.shape[:2], "bilinear").numpy()), truth)
    for row in ("float (Keras)", "float32 TFLite", "dynamic TFLite"):   # dynamic: zero weights and a float base
        assert methods[row]["images"][name]["psnr"] == pytest.approx(bilinear, abs=1e-3), row
    dynamic = exported["dynamic_int8_parity"]["sets"]
    assert set(dynamic) == {"colour", "heldout1"}
    assert dynamic["heldout1"]["per_image"][name]["drop_db"] == pytest.approx(0.0, abs=1e-3)
    assert "dynamic-range int8 (ranges per inference) against float" in exported["table"]
    assert abs(methods["int8 TFLite"]["images"][name]["psnr"] - bilinear) < 0.5   # int8: close, not exact
    assert exported["bytes"]["int8"] < exported["bytes"]["float32"]            # a tiny net: mostly graph, not weights
    assert "QUANTIZE" in check_builtin_only((tmp_path / "export" / "upscaler_int8.tflite").read_bytes())
    parity = exported["int8_parity"]["sets"]["heldout1"]["per_image"]
    assert parity[name]["psnr_float"] == pytest.approx(bilinear, abs=1e-3)
    # which tensor costs what: the zeroed detail branch nothing at all, the rounded bilinear base something
    sensitivity = {row["tensor"]: row for row in exported["int8_sensitivity"]["rows"]}
    assert f"heldout1/{name}" in sensitivity["bilinear"]["per_input_db"]
    floor = sensitivity["weights only"]["fidelity_db"]                # every activation at 16 bits
    for zero in ("to_subpixels", "subpixel"):                          # exact at 8 bits: the floor itself
        assert sensitivity[zero]["fidelity_db"] == pytest.approx(floor, abs=1e-6)
    assert 40 < sensitivity["bilinear"]["fidelity_db"] < 70            # rounded to the input's 8-bit grid,
    assert sensitivity["bilinear"]["clipped_share"] == 0                # whose [0, 1] range holds it whole
    assert sensitivity["bilinear"]["per_input_db"]["colour/flat_yellow"] == float("inf")   # a flat stays exact
    assert parity[name]["psnr_int8"] == pytest.approx(methods["int8 TFLite"]["images"][name]["psnr"], abs=1e-3)
    assert main(["export", "--task", "sr", "--model", distilled["student_path"], "--qat-steps", "5",
                 *settings]) == 2                                  # QAT is the denoising export's


def test_sr_teacher_continues_from_saved_weights_and_never_over_them(sr_cli, tmp_path):
    """init_from starts a new learning-rate cycle from a saved teacher (a learning rate of ~0 keeps
    its weights); a mismatched net or a save_to equal to init_from is refused before training."""
    from kd_tf.cli import main

    root, _ = sr_cli
    settings = ["--set", f"output.runs_dir={tmp_path / 'runs'}", "--set", f"output.log_dir={tmp_path / 'tb'}",
                "--set", f"data={{patch_size: 32, batch_size: 4, val_crop: 64, corpus_path: {root / 'no_corpus'}}}",
                "--set", "train.steps_per_epoch=2", "--set", f"init_from={root / 'teacher.keras'}"]
    assert main(["train-teacher", "--task", "sr", "--steps", "2", "--run-name", "continued", "--set",
                 "net={width: 8, blocks: 1}", "--set", "train.learning_rate=1e-20", "--set",
                 f"save_to={tmp_path / 'continued.keras'}", *settings]) == 0
    start, continued = (keras.saving.load_model(p) for p in (root / "teacher.keras", tmp_path / "continued.keras"))
    for before, after in zip(start.get_weights(), continued.get_weights()):
        np.testing.assert_allclose(after, before, atol=1e-12)
    assert main(["train-teacher", "--task", "sr", "--steps", "2", "--run-name", "wider", "--set",
                 "net={width: 16, blocks: 1}", *settings]) != 0
    assert main(["train-teacher", "--task", "sr", "--steps", "2", "--run-name", "over", "--set",
                 "net={width: 8, blocks: 1}", "--set", f"save_to={root / 'teacher.keras'}", *settings]) != 0
    assert not (tmp_path / "runs" / "over").exists()                # refused up front
