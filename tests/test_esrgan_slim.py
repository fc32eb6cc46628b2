"""kd_tf.sr.esrgan_slim: the TF.js layers-model reader and Keras port against the numpy reference
(synthetic topology and weights written in the tfjs format), the committed .keras, and bad packages.
No npm, no download."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from kd_tf.errors import InputError
from kd_tf.sr import esrgan_slim

COMMITTED = Path(__file__).resolve().parents[1] / "models" / "sr" / "esrgan_slim_x2.keras"


def _conv(name, source, filters, kernel, padding="same", activation="linear"):
    return {"class_name": "Conv2D", "name": name, "inbound_nodes": [[[source, 0, 0, {}]]],
            "config": {"name": name, "filters": filters, "kernel_size": list(kernel), "strides": [1, 1],
                       "padding": padding, "data_format": "channels_last", "dilation_rate": [1, 1], "groups": 1,
                       "activation": activation, "use_bias": True}}


def _node(kind, name, sources, **config):
    return {"class_name": kind, "name": name, "config": {"name": name, **config},
            "inbound_nodes": [[[s, 0, 0, {}] for s in sources]]}


def tiny_layers() -> list[dict]:
    """An RDN in miniature with every supported layer type, a 1x1 'valid', a 5x5 and an even (2, 3) kernel."""
    return [
        {"class_name": "InputLayer", "name": "LR", "inbound_nodes": [],
         "config": {"name": "LR", "batch_input_shape": [None, None, None, 3], "dtype": "float32"}},
        _conv("F_m1", "LR", 8, (3, 3)), _conv("F_0", "F_m1", 8, (2, 3)),
        _conv("F_1_1", "F_0", 4, (3, 3)), _node("Activation", "F_1_1_Relu", ["F_1_1"], activation="relu"),
        _node("Concatenate", "RDB_Concat_1_1", ["F_0", "F_1_1_Relu"], axis=3),
        _conv("LFF_1", "RDB_Concat_1_1", 8, (1, 1), padding="valid"), _node("Add", "LRL_1", ["LFF_1", "F_0"]),
        _node("Add", "FDF", ["LRL_1", "F_m1"]), _conv("UPN1", "FDF", 6, (5, 5), activation="relu"),
        _node("UpSampling2D", "UPsample", ["UPN1"], size=[2, 2], interpolation="nearest"),
        _conv("SR", "UPsample", 3, (3, 3)),
    ]


def write_tfjs_model(folder: Path, seed: int = 0) -> Path:
    """model.json + two weight shards in the tfjs layers format (manifest sorted by name, as the converter)."""
    rng = np.random.default_rng(seed)
    layers, channels, weights = tiny_layers(), {"LR": 3}, []
    for layer in layers:
        sources = [node[0] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        kind, config = layer["class_name"], layer["config"]
        if kind == "Conv2D":
            fan_in = channels[sources[0]] * int(np.prod(config["kernel_size"]))
            kernel = rng.standard_normal((*config["kernel_size"], channels[sources[0]], config["filters"]))
            weights += [(f"{layer['name']}/kernel", kernel * np.sqrt(1.0 / fan_in)),      # activations stay O(255)
                        (f"{layer['name']}/bias", 20 * rng.standard_normal(config["filters"]))]
            channels[layer["name"]] = config["filters"]
        elif kind == "Concatenate":
            channels[layer["name"]] = sum(channels[s] for s in sources)
        elif sources:
            channels[layer["name"]] = channels[sources[0]]
    weights.sort()
    data = b"".join(np.asarray(w, "<f4").tobytes() for _, w in weights)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "group1-shard1of2.bin").write_bytes(data[:len(data) // 2])
    (folder / "group1-shard2of2.bin").write_bytes(data[len(data) // 2:])
    spec = {"format": "layers-model", "modelTopology": {"model_config": {"class_name": "Functional", "config": {
        "name": "generator", "layers": layers, "input_layers": [["LR", 0, 0]], "output_layers": [["SR", 0, 0]]}}},
        "weightsManifest": [{"paths": ["group1-shard1of2.bin", "group1-shard2of2.bin"],
                             "weights": [{"name": n, "shape": list(w.shape), "dtype": "float32"} for n, w in weights]}]}
    (folder / "model.json").write_text(json.dumps(spec))
    return folder / "model.json"


def test_keras_port_matches_numpy_reference(tmp_path):
    layers, weights = esrgan_slim.load_layers_model(write_tfjs_model(tmp_path / "x2"))
    model = esrgan_slim.build_from_layers_model(layers, weights)
    assert sum(int(np.prod(w.shape)) for w in model.weights) == sum(w.size for w in weights.values())
    check = esrgan_slim.numpy_check(model, layers, weights, sizes=((9, 13), (7, 4)))
    assert check["max_abs_diff"] < esrgan_slim.NUMPY_CHECK_TOLERANCE, check
    images = np.random.default_rng(3).random((1, 9, 13, 3)).astype(np.float32)
    reference = esrgan_slim.reference_forward(layers, weights, images)
    assert reference.shape == (1, 18, 26, 3) and np.std(reference) > 0.05     # a check with teeth


def _tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_convert_synthetic_package_writes_model_licence_and_report(tmp_path):
    model_json = write_tfjs_model(tmp_path / "src")
    members = {f"package/models/x2/{p.name}": p.read_bytes() for p in model_json.parent.iterdir()}
    members["package/package.json"] = json.dumps({"license": "MIT", "author": "Someone"}).encode()
    package = _tarball(tmp_path / "fake.tgz", members)
    report = esrgan_slim.convert(package, tmp_path / "out" / "m.keras", pinned=False, score_heldout=False)
    assert report["numpy_check"]["max_abs_diff"] < 1e-4 and report["reload_max_abs_diff"] == 0.0
    assert report["params"] == report["manifest_params"] and report["macs_per_input_pixel"] > 0
    assert "Licence: MIT; author: Someone" in (tmp_path / "out" / "m.LICENSE").read_text()
    assert json.loads((tmp_path / "out" / "m.keras.report.json").read_text())["params"] == report["params"]


@pytest.mark.skipif(not COMMITTED.exists(), reason="run `python -m kd_tf convert-esrgan-slim` first")
def test_committed_model_doubles_the_size_in_range():
    from kd_tf.model_io import load_model

    model = load_model(COMMITTED)
    assert sum(int(np.prod(w.shape)) for w in model.weights) == esrgan_slim.ESRGAN_SLIM_X2_PARAMS
    rng = np.random.default_rng(0)
    low = np.clip(0.5 + 0.2 * rng.standard_normal((1, 13, 17, 3)), 0, 1).astype(np.float32)
    out = np.asarray(model(low))
    assert out.shape == (1, 26, 34, 3)
    assert -0.3 < out.min() and out.max() < 1.3 and abs(out.mean() - low.mean()) < 0.03
    flat = np.full((1, 13, 17, 3), 0.4, np.float32)
    assert np.max(np.abs(np.asarray(model(flat))[0, 4:-4, 4:-4] - 0.4)) < 0.03   # grey stays grey


def test_corrupt_or_wrong_package_is_an_input_error_naming_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.tgz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(InputError, match="corrupt.tgz.*not a readable npm tarball"):
        esrgan_slim.convert(corrupt, tmp_path / "m.keras", pinned=False)
    wrong = _tarball(tmp_path / "wrong.tgz", {esrgan_slim.MODEL_JSON: b"{}"})
    with pytest.raises(InputError, match=f"wrong.tgz: SHA-256 .*accepted: {esrgan_slim.TARBALL_SHA256}"):
        esrgan_slim.convert(wrong, tmp_path / "m.keras")
    with pytest.raises(InputError, match="wrong.tgz:.*model.json is not a TF.js layers model"):
        esrgan_slim.convert(wrong, tmp_path / "m.keras", pinned=False)
    from kd_tf.cli import main

    assert main(["convert-esrgan-slim", "--package", str(wrong), "--out", str(tmp_path / "m.keras")]) == 2
    assert not list(tmp_path.glob("m.*"))


def test_missing_npm_is_one_input_error(monkeypatch, tmp_path):
    monkeypatch.setattr(esrgan_slim.shutil, "which", lambda name: None)
    with pytest.raises(InputError, match="npm is not installed"):
        esrgan_slim.convert_command(None, str(tmp_path / "m.keras"))
