"""kd_tf.denoise.ffdnet: the Keras port of FFDNet against a numpy forward pass written from torch's
semantics, the channel order proved pixel by pixel, the legacy torch pickle reader, .keras
round trips, and (when converted) the real weights on a photo. No torch, no download."""

from __future__ import annotations

import collections
import json
import pickle
import struct
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest

from kd_tf.denoise import ffdnet

REAL_MODEL = Path(__file__).resolve().parents[1] / "models" / "denoise" / "ffdnet_color.keras"


def random_state_dict(rng, channels=3, features=16, depth=4) -> dict[str, np.ndarray]:
    """KAIR's key names and torch layouts (O, I, 3, 3), He-scaled so activations stay O(1)."""
    widths = [channels * 4 + 1] + [features] * (depth - 1) + [channels * 4]
    state = {}
    for index in range(depth):
        fan_in = widths[index] * 9
        state[f"model.{2 * index}.weight"] = (rng.standard_normal((widths[index + 1], widths[index], 3, 3))
                                              * np.sqrt(2.0 / fan_in)).astype(np.float32)
        state[f"model.{2 * index}.bias"] = (0.1 * rng.standard_normal(widths[index + 1])).astype(np.float32)
    return state


def keras_forward(model, images, sigmas):
    return np.asarray(model([images.astype(np.float32), np.asarray(sigmas, np.float32)[:, None]], training=False))


# ---------------------------------------------------------------------------------------------
# Numerics.

@pytest.mark.parametrize("features,depth", [(16, 4), (96, 12)])
@pytest.mark.parametrize("height,width", [(36, 44), (35, 43), (1, 1), (2, 5)])
def test_keras_matches_numpy_reference_with_random_weights(features, depth, height, width):
    rng = np.random.default_rng(height * 100 + width + depth)
    state = random_state_dict(rng, features=features, depth=depth)
    model = ffdnet.build_from_state_dict(state)
    images = rng.random((2, height, width, 3))
    sigmas = np.array([15.0, 50.0]) / 255.0
    ours = keras_forward(model, images, sigmas)
    assert ours.shape == (2, height, width, 3)
    assert np.max(np.abs(ours - ffdnet.reference_forward(state, images, sigmas))) < 1e-4


def test_full_size_random_model_has_the_published_parameter_count():
    model = ffdnet.build_from_state_dict(random_state_dict(np.random.default_rng(0), features=96, depth=12))
    assert sum(int(np.prod(w.shape)) for w in model.weights) == ffdnet.FFDNET_COLOR_PARAMS == 852_108
    assert ffdnet.macs_per_pixel(model) == 212_760.0


def one_hot_state_dict(input_channel: int, output_channel: int, channels=3, features=2):
    """conv0 reads only torch input channel `input_channel` (centre tap) into feature 0; the last
    conv writes feature 0 only to torch output channel `output_channel`."""
    state = {"model.0.weight": np.zeros((features, channels * 4 + 1, 3, 3), np.float32),
             "model.0.bias": np.zeros(features, np.float32),
             "model.2.weight": np.zeros((channels * 4, features, 3, 3), np.float32),
             "model.2.bias": np.zeros(channels * 4, np.float32)}
    state["model.0.weight"][0, input_channel, 1, 1] = 1.0
    state["model.2.weight"][output_channel, 0, 1, 1] = 1.0
    return state


def expected_one_hot(image, sigma, input_channel, output_channel):
    """Written with loops from torch's definitions: unshuffled channel t = c*4 + i*2 + j holds
    pixel (2y+i, 2x+j) of colour c; channel 12 is the noise map; PixelShuffle is the inverse."""
    height, width, _ = image.shape
    out = np.zeros_like(image)
    c2, i2, j2 = output_channel // 4, (output_channel % 4) // 2, output_channel % 2
    for y in range(height // 2):
        for x in range(width // 2):
            if input_channel == 12:
                value = sigma
            else:
                c, i, j = input_channel // 4, (input_channel % 4) // 2, input_channel % 2
                value = image[2 * y + i, 2 * x + j, c]
            out[2 * y + i2, 2 * x + j2, c2] = value
    return out


def test_channel_order_pixel_by_pixel():
    """Fails if the unshuffle or shuffle order is wrong, even when both are wrong the same way."""
    rng = np.random.default_rng(3)
    image = rng.random((6, 8, 3)).astype(np.float32) + 0.1          # positive: ReLU passes it
    sigma = 0.2
    model = ffdnet.build_ffdnet(features=2, depth=2)
    pairs = [(t, 5) for t in range(13)] + [(7, u) for u in range(12)]
    for input_channel, output_channel in pairs:
        state = one_hot_state_dict(input_channel, output_channel)
        ffdnet.load_ffdnet_weights(model, state)
        ours = keras_forward(model, image[None], [sigma])[0]
        want = expected_one_hot(image, sigma, input_channel, output_channel)
        np.testing.assert_allclose(ours, want, atol=1e-6, err_msg=f"torch in {input_channel}, out {output_channel}")
        np.testing.assert_allclose(ffdnet.reference_forward(state, image[None], [sigma])[0], want, atol=1e-12)


def test_odd_sizes_are_edge_padded_not_zero_padded():
    """KAIR pads odd sizes with ReplicationPad2d: the last row's neighbour below is itself."""
    state = one_hot_state_dict(input_channel=2, output_channel=0)   # colour 0, (i, j) = (1, 0) -> (0, 0)
    model = ffdnet.build_from_state_dict(state)
    image = np.random.default_rng(4).random((1, 5, 4, 3)).astype(np.float32) + 0.1
    ours = keras_forward(model, image, [0.1])[0]
    assert ours[4, 0, 0] == pytest.approx(image[0, 4, 0, 0])          # row 5 (the pad) is row 4 repeated


def test_load_rejects_a_state_dict_that_does_not_fit():
    model = ffdnet.build_ffdnet(features=16, depth=4)
    state = random_state_dict(np.random.default_rng(0), features=16, depth=4)
    with pytest.raises(ValueError, match="missing.*model.6.bias"):
        ffdnet.load_ffdnet_weights(model, {k: v for k, v in state.items() if k != "model.6.bias"})
    state["model.2.weight"] = state["model.2.weight"][:, :8]
    with pytest.raises(ValueError, match=r"model.2: torch weight \(16, 8, 3, 3\)"):
        ffdnet.load_ffdnet_weights(model, state)
    with pytest.raises(ValueError, match="depth=1; accepted"):
        ffdnet.build_ffdnet(depth=1)


# ---------------------------------------------------------------------------------------------
# The legacy torch.save format, written here with stand-ins named like torch's classes.

@pytest.fixture()
def fake_torch(monkeypatch):
    """Modules `torch` and `torch._utils` holding stand-ins, so pickle writes torch's global names."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled by name, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage_types = {}
    for name in ("FloatStorage", "DoubleStorage"):
        storage_types[name] = type(name, (), {"__module__": "torch"})
        setattr(torch, name, storage_types[name])
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return types.SimpleNamespace(rebuild=_rebuild_tensor_v2, storage_types=storage_types)


class FakeStorage:
    def __init__(self, key, array):
        self.key, self.array = key, np.ascontiguousarray(array).reshape(-1)


class FakeTensor:
    def __init__(self, rebuild, storage, offset, size, stride):
        self.rebuild, self.storage, self.offset, self.size, self.stride = rebuild, storage, offset, size, stride

    def __reduce__(self):
        return self.rebuild, (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())


def write_legacy(path, fake_torch, tensors: dict, little_endian: bool = True, extra_global=None):
    """torch's _legacy_save layout: magic, protocol, sys info, the object (storages as persistent
    ids), the sorted storage keys, then per key an int64 element count and the raw bytes."""
    storages = {t.storage.key: t.storage for t in tensors.values()}
    order = "<" if little_endian else ">"

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, FakeStorage):
                kind = "DoubleStorage" if obj.array.dtype == np.float64 else "FloatStorage"
                return ("storage", fake_torch.storage_types[kind], obj.key, "cpu", obj.array.size, None)
            return None

    with open(path, "wb") as file:
        pickle.dump(ffdnet.LEGACY_MAGIC_NUMBER, file, protocol=2)
        pickle.dump(1001, file, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": little_endian,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, file, protocol=2)
        state = collections.OrderedDict(tensors)
        if extra_global is not None:
            state["evil"] = extra_global
        Pickler(file, protocol=2).dump(state)
        keys = sorted(storages)
        pickle.dump(keys, file, protocol=2)
        for key in keys:
            array = storages[key].array
            file.write(struct.pack(order + "q", array.size))
            file.write(array.astype(array.dtype.newbyteorder(order)).tobytes())


def legacy_file_of(path, fake_torch, state: dict[str, np.ndarray]):
    tensors = {}
    for index, (name, array) in enumerate(state.items()):
        strides = tuple(s // array.itemsize for s in np.ascontiguousarray(array).strides)
        tensors[name] = FakeTensor(fake_torch.rebuild, FakeStorage(str(1000 + index), array), 0, array.shape, strides)
    write_legacy(path, fake_torch, tensors)
    return path


def test_reads_a_legacy_pickle_with_shared_storage_offsets_and_strides(tmp_path, fake_torch):
    flat = np.arange(20, dtype=np.float32)
    shared = FakeStorage("140001", flat)
    doubles = FakeStorage("140000", np.linspace(0, 1, 6))
    tensors = {
        "weight": FakeTensor(fake_torch.rebuild, shared, 0, (2, 3), (3, 1)),
        "bias": FakeTensor(fake_torch.rebuild, shared, 6, (4,), (1,)),
        "transposed": FakeTensor(fake_torch.rebuild, shared, 10, (3, 2), (1, 3)),
        "float64": FakeTensor(fake_torch.rebuild, doubles, 0, (6,), (1,)),
    }
    for little_endian in (True, False):
        path = tmp_path / f"state_{little_endian}.pth"
        write_legacy(path, fake_torch, tensors, little_endian=little_endian)
        state = ffdnet.read_legacy_torch_state_dict(path)
        assert list(state) == ["weight", "bias", "transposed", "float64"]
        np.testing.assert_array_equal(state["weight"], flat[:6].reshape(2, 3))
        np.testing.assert_array_equal(state["bias"], flat[6:10])
        np.testing.assert_array_equal(state["transposed"], flat[10:16].reshape(2, 3).T)
        assert state["float64"].dtype == np.float64
        np.testing.assert_array_equal(state["float64"], np.linspace(0, 1, 6))


def test_refuses_any_other_global(tmp_path, fake_torch):
    path = tmp_path / "evil.pth"
    write_legacy(path, fake_torch, {}, extra_global=print)           # builtins.print: not allowed
    with pytest.raises(ValueError, match=r"global \w+\.print is not allowed.*accepted: collections.OrderedDict"):
        ffdnet.read_legacy_torch_state_dict(path)


def test_clear_errors_for_zip_checkpoints_truncation_and_other_files(tmp_path, fake_torch):
    zipped = tmp_path / "new.pth"
    zipped.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(ValueError, match="zip-format torch checkpoint.*accepted: legacy"):
        ffdnet.read_legacy_torch_state_dict(zipped)
    path = legacy_file_of(tmp_path / "ok.pth", fake_torch, {"model.0.weight": np.ones((2, 2), np.float32)})
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="ends after 13 of 16 bytes"):
        ffdnet.read_legacy_torch_state_dict(truncated)
    other = tmp_path / "other.pth"
    with open(other, "wb") as file:
        pickle.dump(12345, file, protocol=2)
    with pytest.raises(ValueError, match="magic number 12345; accepted"):
        ffdnet.read_legacy_torch_state_dict(other)


# ---------------------------------------------------------------------------------------------
# Conversion, saving, the CLI verb.

def test_convert_a_legacy_pth_and_reload_the_keras_file(tmp_path, fake_torch):
    state = random_state_dict(np.random.default_rng(5), features=8, depth=3)
    pth = legacy_file_of(tmp_path / "tiny.pth", fake_torch, state)
    out = tmp_path / "tiny.keras"
    report = ffdnet.convert(pth, out, expected_sha256=None)
    assert report["params"] == report["torch_params"] == sum(v.size for v in state.values())
    assert report["numpy_check"]["max_abs_diff"] < 1e-4
    assert set(report["numpy_check"]["per_size"]) == {"36x44", "35x43"}
    assert report["reload_max_abs_diff"] == 0.0
    saved = json.loads(Path(report["report_path"]).read_text())
    assert saved["source"]["pth_sha256"] == report["source"]["pth_sha256"]
    assert "licence_path" not in saved                             # a bare .pth carries no licence file
    loaded = keras.saving.load_model(out, compile=False)
    images = np.random.default_rng(6).random((1, 17, 23, 3))
    np.testing.assert_allclose(keras_forward(loaded, images, [0.1]), ffdnet.reference_forward(state, images, [0.1]),
                               atol=1e-4)
    with pytest.raises(ValueError, match="SHA-256 .*accepted: 0+"):
        ffdnet.convert(pth, out, expected_sha256="0" * 64)
    with pytest.raises(ValueError, match="accepted: a path ending in .keras"):
        ffdnet.convert(pth, tmp_path / "tiny.h5", expected_sha256=None)


def test_cli_verb_checks_the_pinned_sha256(tmp_path, fake_torch, capsys):
    from kd_tf.cli import main

    pth = legacy_file_of(tmp_path / "tiny.pth", fake_torch, random_state_dict(np.random.default_rng(7), features=4,
                                                                                depth=2))
    assert main(["convert-ffdnet", "--wheel", str(pth), "--out", str(tmp_path / "x.keras")]) == 2
    assert ffdnet.FFDNET_COLOR_SHA256 in capsys.readouterr().err
    assert not (tmp_path / "x.keras").exists()


@pytest.mark.skipif(not REAL_MODEL.exists(), reason="run `python -m kd_tf convert-ffdnet` first")
def test_converted_ffdnet_denoises_a_photo_crop():
    from kd_tf.images import default_photos, noisy_copy

    clean = default_photos(["chelsea"])["chelsea"][40:137, 100:195]            # 97 x 95: odd sizes
    noisy = np.clip(np.round(noisy_copy(clean, 25.0, 7) * 255), 0, 255) / 255
    model = keras.saving.load_model(REAL_MODEL, compile=False)
    out = np.clip(keras_forward(model, noisy[None], [25 / 255])[0], 0, 1)

    def psnr(x):
        return 10 * np.log10(1.0 / np.mean((np.asarray(x, np.float64) - clean) ** 2))

    assert out.shape == clean.shape
    assert psnr(out) > psnr(noisy) + 5.0
