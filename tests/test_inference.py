"""Running exported models on images of any size, layout and bit depth."""

import cv2
import keras
import numpy as np
import pytest

from kd_tf import export, inference
from kd_tf.images import add_gaussian_noise, patch_dataset
from kd_tf.metrics import psnr
from kd_tf.denoise.nets import build_unet


@pytest.fixture(scope="module")
def tflite_pair(tmp_path_factory, photos):
    """The same tiny student as a dynamic-shape and a fixed 64x64 float32 TFLite model."""
    folder = tmp_path_factory.mktemp("tflite")
    keras.utils.set_random_seed(0)
    model = build_unet((8, 16), 1, name="student")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")                   # a few steps: a real, bounded denoiser
    model.fit(patch_dataset(photos, 32, 8, (25, 25), seed=0), steps_per_epoch=150, epochs=1, verbose=0)
    model.save(folder / "student.keras")
    paths = {}
    for name, tile in (("dynamic", None), ("fixed", 64)):
        saved = export.export_saved_model(model, folder / f"saved_{name}", tile=tile)
        paths[name] = folder / f"{name}.tflite"
        paths[name].write_bytes(export.to_tflite(saved, "float32"))
    paths["keras"] = folder / "student.keras"
    return paths


def test_tiled_fixed_shape_equals_whole_image_within_0_05_db(tflite_pair, photos):
    clean = photos["chelsea"][:150, :230]
    noisy = add_gaussian_noise(clean, 25, [1, 2]).numpy()
    fixed = inference.load_runner(tflite_pair["fixed"])
    dynamic = inference.load_runner(tflite_pair["dynamic"])
    assert fixed.tile == 64 and dynamic.tile is None
    tiled = inference.run_rgb(fixed, noisy, overlap=32)
    whole = inference.run_rgb(dynamic, noisy)
    assert tiled.shape == whole.shape == clean.shape
    assert float(psnr(clean, whole)) > float(psnr(clean, noisy)) + 2          # it does denoise
    assert abs(float(psnr(clean, tiled)) - float(psnr(clean, whole))) < 0.05
    assert np.abs(tiled - whole).mean() < 5e-3


def test_denoise_folder_keeps_layout_bit_depth_and_counts_bad_files(tflite_pair, tmp_path, caplog):
    source = tmp_path / "in"
    source.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(source / "gray.png"), rng.integers(0, 255, (37, 53), np.uint8))
    cv2.imwrite(str(source / "rgba.png"), rng.integers(0, 255, (40, 41, 4), np.uint8))
    cv2.imwrite(str(source / "deep.tif"), rng.integers(0, 65535, (33, 30, 3), np.uint16))
    (source / "bad.jpg").write_bytes(b"not a jpeg")
    for model in ("keras", "fixed"):
        with caplog.at_level("WARNING"):
            result = inference.denoise_path(tflite_pair[model], source, tmp_path / model, progress=False)
        assert sorted(p.split("/")[-1] for p in result["written"]) == ["deep.png", "gray.png", "rgba.png"]
        assert list(result["skipped"]) == [str(source / "bad.jpg")]
        gray = cv2.imread(str(tmp_path / model / "gray.png"), cv2.IMREAD_UNCHANGED)
        rgba = cv2.imread(str(tmp_path / model / "rgba.png"), cv2.IMREAD_UNCHANGED)
        deep = cv2.imread(str(tmp_path / model / "deep.png"), cv2.IMREAD_UNCHANGED)
        assert gray.shape == (37, 53) and rgba.shape == (40, 41, 4) and deep.dtype == np.uint16
        np.testing.assert_array_equal(rgba[..., 3], cv2.imread(str(source / "rgba.png"), cv2.IMREAD_UNCHANGED)[..., 3])
    assert "skipped 1 of 4 files" in caplog.text


def test_missing_model_and_input_are_clear(tflite_pair, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inference.load_runner(tmp_path / "none.tflite")
    with pytest.raises(FileNotFoundError, match="neither an image file nor a folder"):
        inference.denoise_path(tflite_pair["keras"], tmp_path / "nothing", tmp_path / "out", progress=False)
