"""Property tests (hypothesis): tiled inference equals whole-image inference for fully
convolutional models at any size, and the image reader returns exactly what was written for
every pixel type, channel layout and lossless format it accepts."""

import io

import cv2
import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageOps

from kd_tf import images, inference
from kd_tf.denoise.nets import build_unet

SETTINGS = settings(max_examples=25, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _odd_layers_net():
    """A fully convolutional net of other layer kinds: dilation, pooling, upsampling, depthwise."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", dilation_rate=2, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.DepthwiseConv2D(5, padding="same")(x)
    x = keras.layers.AveragePooling2D(2, padding="same")(x)
    x = keras.layers.SeparableConv2D(6, 3, padding="same", activation="relu")(x)
    x = keras.layers.UpSampling2D(4)(x)
    x = keras.layers.Conv2D(3, 3, padding="same")(x)
    return keras.Model(inputs, keras.layers.Add()([inputs, x]), name="odd")


@pytest.fixture(scope="module")
def runners():
    keras.utils.set_random_seed(3)
    nets = {"unet2": build_unet((4, 8), 1), "unet4": build_unet((4, 4, 8, 8), 1), "odd": _odd_layers_net()}
    result = {}
    for name, net in nets.items():
        margin = inference.receptive_radius(net)
        assert margin is not None and margin > 0
        result[name] = inference.Runner(lambda batch, net=net: np.asarray(net(batch, training=False)),
                                        stride=8, margin=margin)
    return result


@SETTINGS
@given(net=st.sampled_from(["unet2", "unet4", "odd"]), height=st.integers(1, 90), width=st.integers(1, 90),
       max_tile=st.sampled_from([8, 16, 24, 40]), seed=st.integers(0, 2**16))
def test_tiled_equals_whole_image_for_fully_convolutional_models(runners, net, height, width, max_tile, seed):
    runner = runners[net]
    image = np.random.default_rng(seed).random((height, width, 3), np.float32)
    whole = inference.run_rgb(runner, image, max_tile=10**6)
    tiled = inference.run_rgb(runner, image, max_tile=max_tile)
    assert tiled.shape == whole.shape == image.shape
    np.testing.assert_allclose(tiled, whole, atol=2e-5, rtol=0)


def test_too_small_a_margin_is_visible(runners):
    """The property above has teeth: a margin below the receptive radius changes the result."""
    image = np.random.default_rng(0).random((64, 64, 3), np.float32)
    runner = runners["unet4"]
    whole = inference.run_rgb(runner, image, max_tile=10**6)
    short = inference.Runner(runner.predict, stride=8, margin=8)
    assert np.abs(inference.run_rgb(short, image, max_tile=16) - whole).max() > 1e-3


def test_receptive_radius_of_known_nets():
    assert inference.receptive_radius(build_unet((4, 8), 1)) == 14
    assert inference.receptive_radius(build_unet((12, 24, 48, 96), 1)) == 74
    inputs = keras.Input((None, None, 3))
    unknown = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs))
    assert inference.receptive_radius(unknown) is None


# ---------------------------------------------------------------------------------------------
# The reader: every (format, pixel type, layout) it accepts, written losslessly by OpenCV.

ACCEPTED = [(".png", np.uint8, layout) for layout in ("hw", 1, 3, 4)] + \
           [(".png", np.uint16, layout) for layout in ("hw", 1, 3, 4)] + \
           [(".tif", dtype, layout) for dtype in (np.uint8, np.uint16, np.float32) for layout in ("hw", 1, 3, 4)] + \
           [(".bmp", np.uint8, layout) for layout in ("hw", 3)] + \
           [(".pgm", dtype, "hw") for dtype in (np.uint8, np.uint16)] + \
           [(".ppm", dtype, 3) for dtype in (np.uint8, np.uint16)] + \
           [(".webp", np.uint8, layout) for layout in (3, 4)]


@st.composite
def stored_images(draw):
    extension, dtype, layout = draw(st.sampled_from(ACCEPTED))
    shape = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    shape += () if layout == "hw" else (layout,)
    if dtype == np.float32:
        elements = st.floats(0.0, 1.0, width=32)
    else:
        elements = st.integers(0, np.iinfo(dtype).max)
    array = draw(arrays(dtype, shape, elements=elements))
    if extension == ".webp" and layout == 4:
        # lossless WebP keeps no colour under alpha 0 (libwebp drops it), so a fully transparent
        # pixel cannot round-trip its RGB: a limit of the format, not of the reader
        array[..., 3] = np.maximum(array[..., 3], 1)
    return extension, array


@SETTINGS
@given(stored=stored_images(), keep_alpha=st.booleans())
def test_reader_round_trips_every_accepted_layout(tmp_path, stored, keep_alpha):
    extension, array = stored
    params = {".webp": [cv2.IMWRITE_WEBP_QUALITY, 101], ".tif": [cv2.IMWRITE_TIFF_COMPRESSION, 1]}.get(extension, [])
    path = tmp_path / f"image{extension}"
    assert cv2.imwrite(str(path), array, params)
    image = images.read_image(path, keep_alpha=keep_alpha)
    peak = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535, np.dtype(np.float32): 1}[array.dtype]
    stored_bgr = array.reshape(array.shape[:2] + (-1,)).astype(np.float32) / np.float32(peak)
    order = {1: [0, 0, 0], 3: [2, 1, 0], 4: [2, 1, 0, 3] if keep_alpha else [2, 1, 0]}[stored_bgr.shape[-1]]
    expected = stored_bgr[..., order]
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, expected)


@SETTINGS
@given(image=arrays(np.float32, st.tuples(st.integers(1, 10), st.integers(1, 10), st.sampled_from([3, 4])),
                    elements=st.floats(-0.5, 1.5, width=32)),
       bit_depth=st.sampled_from([8, 16]))
def test_write_then_read_is_exact_up_to_quantization(tmp_path, image, bit_depth):
    path = tmp_path / "out.png"
    images.write_image(path, image, bit_depth=bit_depth)
    back = images.read_image(path, keep_alpha=True)
    peak = 255 if bit_depth == 8 else 65535
    np.testing.assert_allclose(back, np.clip(image, 0, 1), atol=0.5 / peak + 1e-6, rtol=0)


@SETTINGS
@given(orientation=st.integers(1, 8), height=st.integers(1, 9), width=st.integers(1, 9),
       kind=st.sampled_from(["PNG", "WEBP", "TIFF"]), seed=st.integers(0, 2**16))
def test_exif_orientation_matches_pillow(tmp_path, orientation, height, width, kind, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, kind, exif=exif.tobytes(), **({"lossless": True} if kind == "WEBP" else {}))
    (tmp_path / "photo.img").write_bytes(buffer.getvalue())
    upright = np.asarray(ImageOps.exif_transpose(Image.open(buffer)), np.float32) / np.float32(255)
    np.testing.assert_array_equal(images.read_image(tmp_path / "photo.img"), upright)


def test_a_model_that_pools_the_whole_image_is_never_cut_into_tiles(tmp_path, caplog, context_unet):
    """A global-context U-Net's every pixel depends on the whole image: loaded from its file, it runs
    whole even above max_tile (tiles would each pool their own crop), and a fixed-tile runner of
    such a model warns that its result is not the whole-image one."""
    from kd_tf.model_io import save_model

    net, rng = context_unet((4, 8), 3, kernel_std=1.0, seed=5), np.random.default_rng(0)
    runner = inference.load_runner(save_model(net, tmp_path / "context.keras"))
    assert runner.pools_whole_image and not inference.load_runner(
        save_model(build_unet((4, 8), 1, name="plain"), tmp_path / "plain.keras")).pools_whole_image
    image = rng.random((24, 320, 3), np.float32)              # wider than a tile and its 96 px margins
    whole = np.asarray(net(image[None], training=False))[0]
    np.testing.assert_allclose(inference.run_rgb(runner, image, max_tile=16), whole, atol=2e-5, rtol=0)
    tiled = inference.Runner(runner.predict, stride=8, tile=32, pools_whole_image=True)
    with caplog.at_level("WARNING", logger="kd_tf.inference"):
        inference.run_rgb(tiled, image)
    assert "each tile pools its own crop" in caplog.text
