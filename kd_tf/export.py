"""Every SavedModel / TFLite / LiteRT call of kd_tf: the student alone, out to files a phone runs.

`tf.lite` is moving to LiteRT, so this is the one module that touches it: conversion still goes
through `tf.lite.TFLiteConverter` (TensorFlow's converter), running goes through the
`ai-edge-litert` interpreter, never the deprecated `tf.lite.Interpreter`; the one per-layer choice
the converter cannot make (float layers in a dynamic-range file) goes through LiteRT's own
`ai-edge-quantizer` (`dynamic_range_int8`).
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kd_tf.atomic import replace_directory
from kd_tf.errors import InputError

TFLITE_MODES = ("float32", "float16", "dynamic", "int8", "int16x8")


class FlexOpsError(RuntimeError):
    """A converted model needs TensorFlow ops outside the TFLite builtins (it would not run on a phone)."""


def export_saved_model(model: keras.Model, directory: str | os.PathLike, input_name: str | None = None,
                       tile: int | None = None) -> Path:
    """SavedModel with `serve` and `serving_default` signatures and a named input.

    Image models take NHWC batches (input "noisy"); height and width are dynamic unless `tile`
    fixes the input to 1 x tile x tile (for runtimes and delegates that want static shapes;
    kd_tf.inference then tiles large images). Generators take (batch, latent_dim) vectors
    (input "latent"), batch dynamic. A model of several inputs (a non-blind denoiser's image
    and noise level) keeps its inputs' names and shapes, batch dynamic; `input_name` and `tile`
    then do not apply. Non-overlapping transposed convolutions are traced as their
    `shuffle_upsampling` equivalent (the same function; faster as TFLite).
    """
    directory = Path(directory)
    model = shuffle_upsampling(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    if len(model.inputs) > 1:
        specs = [tf.TensorSpec((None, *tuple(x.shape)[1:]), tf.float32, name=x.name) for x in model.inputs]
        archive.add_endpoint("serve", lambda *inputs: model(list(inputs), training=False), input_signature=specs)
    else:
        channels = model.input_shape[-1]
        if takes_latent(model):
            shape, input_name = (None, channels), input_name or "latent"
        else:
            shape = (None, None, None, channels) if tile is None else (1, tile, tile, channels)
            input_name = input_name or "noisy"
        spec = tf.TensorSpec(shape, tf.float32, name=input_name)
        archive.add_endpoint("serve", lambda images: model(images, training=False), input_signature=[spec])
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    archive.write_out(str(partial), verbose=False)
    replace_directory(partial, directory)
    return directory


def shuffle_upsampling(model: keras.Model) -> keras.Model:
    """`model` with each non-overlapping Conv2DTranspose (kernel == strides, square, channels last)
    replaced by a 1x1 Conv2D to s*s*C channels and a DepthToSpace(s): the same function, exactly.

    Why: TFLite's converter gives such a transposed convolution an output shape computed at run
    time (SHAPE, STRIDED_SLICE, SUB, MUL, PACK before each TRANSPOSE_CONV: 30 extra ops in the
    shipped denoising student, 68 ops instead of 38); CONV_2D and DEPTH_TO_SPACE have static
    shapes. Returns `model` itself when nothing applies (no such layer, or a model that is not
    functional).

    >>> inputs = keras.Input((None, None, 8))
    >>> up = keras.layers.Conv2DTranspose(4, 2, strides=2, activation="relu")(inputs)
    >>> model = keras.Model(inputs, up)
    >>> rewritten = shuffle_upsampling(model)
    >>> [type(layer).__name__ for layer in rewritten.layers[1:]]
    ['Conv2D', 'DepthToSpace']
    >>> x = np.random.default_rng(0).random((1, 5, 6, 8)).astype("float32")
    >>> bool(np.allclose(model(x), rewritten(x), atol=1e-6))
    True
    """
    from kd_tf.layers import DepthToSpace

    def replaced(layer) -> bool:
        return (type(layer) is keras.layers.Conv2DTranspose and layer.data_format == "channels_last"
                and tuple(layer.kernel_size) == tuple(layer.strides) and len(set(layer.strides)) == 1
                and tuple(layer.dilation_rate) == (1, 1))

    if not any(replaced(layer) for layer in getattr(model, "layers", [])) or not hasattr(model, "inputs") \
            or isinstance(model, keras.Sequential) or not hasattr(model, "_operations"):
        return model
    originals = {}

    def clone(layer):
        config = layer.get_config()
        if not replaced(layer):
            return layer.__class__.from_config(config)
        block = layer.strides[0]
        conv = keras.layers.Conv2D(layer.filters * block * block, 1, activation=config["activation"],
                                   use_bias=layer.use_bias, name=layer.name, dtype=config["dtype"])
        originals[layer.name] = block
        return conv

    def call(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        if layer.name in originals and type(layer) is keras.layers.Conv2D:
            outputs = DepthToSpace(originals[layer.name], name=f"{layer.name}_shuffle")(outputs)
        return outputs

    rewritten = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if replaced(layer):                    # kernel (s, s, C, in) -> (1, 1, in, (a*s + b)*C + c)
            kernel, *bias = weights
            block, width = kernel.shape[0], kernel.shape[2]
            kernel = np.transpose(kernel, (3, 0, 1, 2)).reshape(1, 1, kernel.shape[3], block * block * width)
            weights = [kernel] + [np.tile(b, block * block) for b in bias]
        rewritten.get_layer(layer.name).set_weights(weights)
    return rewritten


def takes_latent(model: keras.Model) -> bool:
    """Whether the model takes (batch, size) vectors, a generator's latent z, rather than images."""
    return len(model.input_shape) == 2


def latent_calibration(latent_dim: int, batches: int = 16, batch_size: int = 64, seed: int = 0) -> list:
    """Representative data for a generator's int8 conversion: N(0, 1) latents, as in training."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch_size, latent_dim)).astype(np.float32) for _ in range(batches)]




def to_tflite(saved_model_dir: str | os.PathLike, mode: str = "float32", representative=None,
              float_fallback: bool = False) -> bytes:
    """Converts a SavedModel to a TFLite flatbuffer with builtin ops only.

    mode: float32, float16 (weights), dynamic (int8 weights, float activations), int8 (full
    integer, calibrated on `representative`: an iterable of float32 NHWC batches preprocessed as
    in training, or latent batches for a generator, see `latent_calibration`), int16x8 (int16 activations, int8 weights). Inputs and outputs stay float32,
    so every mode is a drop-in replacement for the others. `float_fallback` (int8 only, no
    `representative` needed) lets an int8 file keep float ops where the SavedModel has no
    quantization ranges (int8_ready's `float_layers`).
    """
    if mode not in TFLITE_MODES:
        raise InputError(f"TFLite mode {mode!r}; accepted: {', '.join(TFLITE_MODES)}")
    if float_fallback and mode != "int8":
        raise InputError(f"float_fallback is for mode 'int8' (a SavedModel from int8_ready with float_layers); "
                         f"got mode {mode!r}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    # float_fallback takes no representative data: with it the converter would calibrate (and quantize) the
    # float layers too; without, it quantizes where the fake-quant ranges say and leaves the rest float
    if mode in ("int8", "int16x8") and not float_fallback:
        if representative is None:
            raise InputError(f"mode {mode!r} needs representative data (real images, preprocessed as in training)")
        batches = list(representative)

        def calibration():
            for batch in batches:
                yield [np.asarray(batch, np.float32)]

        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = (     # 16x8 has no DEPTH_TO_SPACE: that op stays float
            [tf.lite.OpsSet.TFLITE_BUILTINS_INT8] if mode == "int8"
            else [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                  tf.lite.OpsSet.TFLITE_BUILTINS])
    flatbuffer = converter.convert()
    check_builtin_only(flatbuffer)
    return flatbuffer


def dynamic_range_int8(float32_flatbuffer: bytes, float_layers=(), min_elements: int | None = None) -> bytes:
    """Dynamic-range int8 from a float32 file, by ai-edge-quantizer: the converter's rule (int8
    per-output-channel weights, scale max|w| / 127, for kernels of at least `min_elements` weights;
    activations rounded per call at run time) with the convolutions named in `float_layers`
    left in float, one op each.

    The converter has no per-layer switch; splitting a layer below its threshold
    (kd_tf.float_layers.keep_float) keeps it float at one CONV_2D per group, which costs more
    than its MACs: the shipped denoising student's file with two float layers is 1.54-1.73x
    faster than float32 split, 1.88-2.20x joined, 2.11-2.78x with none
    (benchmarks/dynamic_float_layers_speed.json, a 2-core AVX512-VNNI CPU). Kernels
    already on the int8 grid (kd_tf.weight_rounding) keep their values. Checks the result: each
    named layer is float, every other kernel the rule quantizes is int8, builtin ops only.
    """
    import logging
    import re

    from ai_edge_quantizer import qtyping, quantizer, recipe

    from kd_tf.weight_rounding import MIN_ELEMENTS

    min_elements = MIN_ELEMENTS if min_elements is None else int(min_elements)
    rules = recipe.dynamic_legacy_wi8_afp32()
    for rule in rules:
        rule["op_config"]["min_weight_elements"] = min_elements
    quantize = quantizer.Quantizer(bytearray(float32_flatbuffer))
    quantize.load_quantization_recipe(rules)
    patterns = {name: rf"(^|[/;]){re.escape(name)}(_\d+)?/" for name in float_layers}
    for pattern in patterns.values():
        quantize.update_quantization_recipe(regex=pattern, operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                            algorithm_key="no_quantize")
    quiet = logging.getLogger("absl").level
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        flatbuffer = bytes(quantize.quantize().quantized_model)
    finally:
        logging.getLogger("absl").setLevel(quiet)
    check_builtin_only(flatbuffer)
    kernels = convolution_kernels(flatbuffer)
    for name, pattern in patterns.items():
        found = [row for row in kernels if re.search(pattern, row["output"])]
        if not found:
            raise InputError(f"float layer {name!r}: no convolution of the file writes it; its convolutions: "
                             f"{[row['output'].split(';')[0] for row in kernels]}")
        if any(row["kernel_type"] != "FLOAT32" for row in found):
            raise RuntimeError(f"float layer {name!r} was quantized: {found}")
    named = {row["output"] for row in kernels for pattern in patterns.values() if re.search(pattern, row["output"])}
    missed = [row for row in kernels if row["output"] not in named and row["elements"] >= min_elements
              and row["kernel_type"] != "INT8"]
    if missed:
        raise RuntimeError(f"kernels of at least {min_elements} weights left unquantized: {missed}")
    return flatbuffer


def _equalized_copy(model: keras.Model, batches: list, equalize=None) -> keras.Model:
    """A copy of `model` (the caller's never changes), equalized by `equalize(copy, batches)` on the
    first half of the calibration batches (they interleave kinds of data), then its transposed 2x2
    convolutions made convolutions (after equalize, which knows the transposed ones)."""
    source = keras.models.clone_model(model)
    source.set_weights(model.get_weights())
    if equalize is not None:
        equalize(source, batches[: max(1, len(batches) // 2)])
    return shuffle_upsampling(source)


def int8_ready(model: keras.Model, calibration, percentile: float = 99.99, equalize=None,
               input_range: tuple[float, float] | None = None,
               output_range: tuple[float, float] | None = None, float_layers=()) -> keras.Model:
    """A copy of `model` prepared for full-integer conversion, with the same float function.

    `equalize(copy, batches)`, when given, first rescales the copy's channels in place without
    changing its float function (kd_tf.denoise.nets.unet_equalizer does it for U-Nets); then every
    tensor gets a fake-quantization range from percentiles of its activations on `calibration`.
    The converter keeps those ranges instead of its own min/max calibration: on the shipped
    student this halves the int8 loss (0.27 -> 0.12 dB at sigma 25, see the model card).

    `calibration` must cover what the model will see: for a denoiser, photos *and* the colour
    gamut (kd_tf.int8_parity.gamut_images), or saturated colours clip (issue 17).
    `input_range` / `output_range` fix the input's and the output's range instead (an image
    model: (0, 1), so an 8-bit image is represented exactly and the output clips to what an
    8-bit file holds, as the evaluation clips it anyway). `float_layers` stay float (convert with
    `to_tflite(..., float_fallback=True)`; see kd_tf.fake_quant.quantize_aware): a fixed range is
    skipped where its tensor is float.
    """
    from kd_tf.fake_quant import calibrate_ranges, quantize_aware, quant_name, set_tied_range

    batches = list(calibration)
    source = _equalized_copy(model, batches, equalize)
    ready = calibrate_ranges(quantize_aware(source, float_layers=float_layers), source, batches, percentile)
    names = {layer.name for layer in ready.layers}
    # the copy's own input: an unnamed keras.Input is renamed by the cloning (input_layer -> keras_tensor)
    for tensor, fixed in ((ready.inputs[0], input_range), (model.outputs[0], output_range)):
        name = quant_name(tensor._keras_history[0].name)
        if fixed is not None and name in names:
            set_tied_range(ready, name, *fixed)
    return ready


def dynamic_ready(model: keras.Model, calibration, equalize=None) -> tuple[keras.Model, dict]:
    """A copy of `model` for dynamic-range int8 conversion, with the same float function up to
    int8 weight rounding: `equalize(copy, batches)` first (see int8_ready), then the transposed
    2x2 convolutions become convolutions, then kd_tf.weight_rounding.gptq_int8_weights puts the
    kernels on the int8 grid the converter uses, rounded by GPTQ against the run-time rounding of
    the activations. Returns (copy, per-layer rounding errors nearest vs GPTQ). On the shipped
    denoising student it cuts the colour set's mean loss from 0.166 to 0.080 dB (see its model card)."""
    from kd_tf.weight_rounding import gptq_int8_weights

    batches = list(calibration)
    return gptq_int8_weights(_equalized_copy(model, batches, equalize), batches, dynamic_activations=True)


def op_names(flatbuffer: bytes) -> list[str]:
    """The operator names a TFLite model uses (custom ops by their custom code)."""
    from ai_edge_litert import schema_py_generated as schema

    names_by_code = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    names = []
    for code in model.operatorCodes:
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
            names.append(f"CUSTOM:{custom}")
        else:
            names.append(names_by_code.get(builtin, f"BUILTIN_{builtin}"))
    return names


def downsampling_stride(flatbuffer: bytes) -> int:
    """2 ** (stride-2 convolutions in the main graph), times the block size of each SPACE_TO_DEPTH
    (pixel-unshuffle): what a U-Net's TFLite file needs its height and width divisible by (8 for the
    shipped 4-level student, 16 for a 5-level one or a 4-level one at half resolution), 1 without any."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    codes = [max(code.builtinCode, code.deprecatedBuiltinCode) for code in model.operatorCodes]
    strided = (schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D)
    stride = 1
    for op in model.subgraphs[0].operators:
        if codes[op.opcodeIndex] in strided and op.builtinOptions.strideH == 2:
            stride *= 2
        elif codes[op.opcodeIndex] == schema.BuiltinOperator.SPACE_TO_DEPTH:
            stride *= int(op.builtinOptions.blockSize)
    return stride


def convolution_types(flatbuffer: bytes) -> dict[str, int]:
    """How many CONV_2D ops of the main graph compute in each input type ({"INT8": 14, "FLOAT32": 6}):
    what a full-integer file with float layers (int8_ready's `float_layers`) really kept in float."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    codes = [max(code.builtinCode, code.deprecatedBuiltinCode) for code in model.operatorCodes]
    type_names = {value: name for name, value in vars(schema.TensorType).items() if not name.startswith("_")}
    graph, counts = model.subgraphs[0], {}
    for op in graph.operators:
        if codes[op.opcodeIndex] == schema.BuiltinOperator.CONV_2D:
            name = type_names[graph.tensors[op.inputs[0]].type]
            counts[name] = counts.get(name, 0) + 1
    return counts


def convolution_kernels(flatbuffer: bytes) -> list[dict]:
    """Each CONV_2D op of the main graph: its output tensor's name (it carries the Keras layer's
    name), its kernel's type and number of weights: which layers a dynamic-range file quantized."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    codes = [max(code.builtinCode, code.deprecatedBuiltinCode) for code in model.operatorCodes]
    type_names = {value: name for name, value in vars(schema.TensorType).items() if not name.startswith("_")}
    graph, rows = model.subgraphs[0], []
    for op in graph.operators:
        if codes[op.opcodeIndex] == schema.BuiltinOperator.CONV_2D:
            kernel, output = graph.tensors[op.inputs[1]], graph.tensors[op.outputs[0]]
            name = output.name.decode() if isinstance(output.name, bytes) else str(output.name)
            rows.append({"output": name, "kernel_type": type_names[kernel.type],
                         "elements": int(np.prod(kernel.shape))})
    return rows


def check_builtin_only(flatbuffer: bytes) -> list[str]:
    """Fails loudly if a Flex (SELECT_TF_OPS) or other custom op slipped into the model."""
    names = op_names(flatbuffer)
    custom = [name for name in names if name.startswith("CUSTOM:")]
    if custom:
        raise FlexOpsError(f"the TFLite model needs non-builtin ops {custom}; it would not run with "
                           f"the plain LiteRT runtime. All ops: {names}")
    return names


class LiteRTModel:
    """A TFLite model run by the LiteRT interpreter, callable like a Keras model on NHWC batches
    (or on latent batches, for a generator).

    Inputs of a new shape resize the interpreter's input (models converted with dynamic H/W);
    a fixed-shape model raises a clear error instead (use kd_tf.inference tiling for those).
    `stride` is the file's downsampling factor (`downsampling_stride`): H and W must be its multiples.
    """

    def __init__(self, model: bytes | str | os.PathLike, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        content = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
        self.interpreter = Interpreter(model_content=bytes(content), num_threads=num_threads)
        details = self.interpreter.get_input_details()[0]
        signature, shape = list(details["shape_signature"]), list(details["shape"])
        self._content = bytes(content)
        if len(signature) == 4 and -1 in signature[1:3]:   # dynamic H/W default to 1, which a SPACE_TO_DEPTH
            # (pixel-unshuffle) cannot prepare: start at one stride
            shape[1:3] = [self.stride if dim == -1 else size for dim, size in zip(signature[1:3], shape[1:3])]
            self.interpreter.resize_tensor_input(details["index"], shape)
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._shape = None

    @functools.cached_property
    def stride(self) -> int:
        """What H and W must be multiples of (`downsampling_stride` of the file, parsed once)."""
        return downsampling_stride(self._content)

    @property
    def input_signature(self) -> tuple:
        """The input shape with -1 for dynamic axes."""
        return tuple(int(d) for d in self._input["shape_signature"])

    def __call__(self, images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.shape != self._shape:
            fixed = [d for d, s in zip(self.input_signature, images.shape) if d != -1 and d != s]
            if fixed:
                raise InputError(f"this TFLite model takes inputs of shape {self.input_signature}, got {images.shape}")
            self.interpreter.resize_tensor_input(self._input["index"], list(images.shape))
            self.interpreter.allocate_tensors()
            self._input = self.interpreter.get_input_details()[0]
            self._output = self.interpreter.get_output_details()[0]
            self._shape = images.shape
        self.interpreter.set_tensor(self._input["index"], images)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output["index"])
