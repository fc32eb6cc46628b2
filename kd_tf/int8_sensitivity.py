"""Which tensor costs the int8 model its quality: a table of each tensor's share of the loss.

Full-integer TFLite rounds every tensor to 8 bits over one calibrated range, and either can hurt:
the range clips (activations beyond it saturate) or its 256 levels are too coarse for what follows
(a long skip carries the first layer's rounding straight to the output). A fake-quantized copy of
the model (kd_tf.export.int8_ready, what the converter turns into the int8 TFLite) simulates that
in Keras. Here every fake-quantization but one is made harmless (`wide_bits` over all it sees),
so each row is the loss that one tensor causes on its own, clipping and rounding; the
`all tensors` row is the int8 model itself and the `weights only` row (every activation harmless)
is what the per-channel int8 kernels cost.

The super-resolution export writes this table into its report (`int8_sensitivity`): on the
shipped upscaler it names the first convolution's output, which the long skip carries to the
output, and the bilinear base (see models/sr/MODEL_CARD.md).

>>> import keras
>>> from kd_tf.export import int8_ready
>>> inputs = keras.Input((None, None, 1))
>>> model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same", name="conv")(inputs))
>>> batch = np.random.default_rng(0).random((2, 8, 8, 1)).astype("float32")
>>> table = quantization_sensitivity(model, int8_ready(model, [batch]), {"noise": batch})
>>> [row["tensor"] for row in table["rows"]][:2]
['all tensors', 'weights only']
>>> sorted(row["tensor"] for row in table["rows"][2:]) == sorted(["conv", model.inputs[0].name])
True
"""

from __future__ import annotations

import keras
import numpy as np

ALL_ROW, WEIGHTS_ROW = "all tensors", "weights only"


def _mse(simulated, reference) -> float:
    return float(np.mean((np.asarray(simulated, np.float64) - np.asarray(reference, np.float64)) ** 2))


def _db(mse: float, peak: float) -> float:
    """PSNR for a mean squared error (inf when the outputs are equal)."""
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak ** 2 / mse))


def quantization_sensitivity(float_model, ready: keras.Model, inputs: dict[str, np.ndarray],
                             wide_bits: int = 16, peak: float = 1.0, output_transform=None) -> dict:
    """Per-tensor sensitivity of `ready` (a fake-quantized copy of `float_model`, with its ranges
    set) on `inputs` ({name: NHWC batch}).

    Returns {"rows": [...], "columns": {...}}; each row: the tensor (the layer whose output it is),
    its range, the share of its values outside the range on `inputs` (clipped), and the fidelity of
    the output, PSNR(simulated int8 vs float, peak `peak`), per input and its mean. Rows after the
    two summary rows are sorted worst first. The FakeQuant widths and ranges are restored on return.

    `output_transform` maps both outputs to what the user gets before they are compared (an image
    task: kd_tf.images.to_8bit, so the output's own clipping and rounding, which the float model's
    8-bit file has too, cost nothing).
    """
    from kd_tf.fake_quant import FakeQuant

    if not inputs:
        raise ValueError("quantization_sensitivity needs at least one input batch, got none")
    if not 8 < int(wide_bits) <= 16:
        raise ValueError(f"wide_bits={wide_bits!r}; accepted: 9 to 16 (tf.quantization.fake_quant_*'s limit)")
    quants = [layer for layer in ready.layers if isinstance(layer, FakeQuant)]
    if not quants:
        raise ValueError(f"{ready.name!r} has no FakeQuant layer: pass kd_tf.export.int8_ready's copy of the model")
    finish = output_transform or (lambda outputs: outputs)
    references = {name: np.asarray(finish(np.asarray(float_model(batch, training=False)))) for name, batch in inputs.items()}

    def fidelity() -> dict:
        return {name: _mse(finish(np.asarray(ready(batch, training=False))), references[name])
                for name, batch in inputs.items()}

    def row(tensor: str, errors: dict, **extra) -> dict:
        return {"tensor": tensor, **extra, "fidelity_db": _db(float(np.mean(list(errors.values()))), peak),
                "per_input_db": {name: _db(mse, peak) for name, mse in errors.items()}}

    calibrated = [(quant.num_bits, float(quant.range_min.numpy()), float(quant.range_max.numpy())) for quant in quants]
    taps = keras.Model(ready.inputs, [quant.input for quant in quants])

    def tapped() -> list[np.ndarray]:
        """Every FakeQuant's input on all of `inputs`, flattened."""
        per_input = [[np.asarray(t).ravel() for t in _as_list(taps(batch, training=False))] for batch in inputs.values()]
        return [np.concatenate(values) for values in zip(*per_input)]

    def widen_all():
        """Every FakeQuant at `wide_bits` over all it sees, so it neither rounds coarsely nor clips;
        repeated because a range widened upstream changes what flows downstream."""
        for _ in range(3):
            changed = False
            for quant, values in zip(quants, tapped()):
                low = min(float(quant.range_min.numpy()), float(values.min()))
                high = max(float(quant.range_max.numpy()), float(values.max()))
                changed |= (low, high) != (float(quant.range_min.numpy()), float(quant.range_max.numpy()))
                quant.num_bits = int(wide_bits)
                quant.set_range(low, high)
            if not changed:
                break

    try:
        rows = [row(ALL_ROW, fidelity())]
        widen_all()
        wide = [(float(quant.range_min.numpy()), float(quant.range_max.numpy())) for quant in quants]
        rows.append(row(WEIGHTS_ROW, fidelity()))
        seen = tapped()
        singles = []
        for quant, (bits, low, high), (wide_low, wide_high), values in zip(quants, calibrated, wide, seen):
            quant.num_bits = bits
            quant.set_range(low, high)
            singles.append(row(quant.name.removesuffix("_quant"), fidelity(), range=[low, high],
                               clipped_share=float(np.mean((values < low) | (values > high)))))
            quant.num_bits = int(wide_bits)
            quant.set_range(wide_low, wide_high)
        rows.extend(sorted(singles, key=lambda r: r["fidelity_db"]))
    finally:
        for quant, (bits, low, high) in zip(quants, calibrated):
            quant.num_bits = bits
            quant.set_range(low, high)
    compared = f", both through {getattr(output_transform, '__name__', 'a transform')}" if output_transform else ""
    return {"rows": rows, "columns": {
        "fidelity_db": f"PSNR of the simulated int8 output against the float output (peak {peak:g}{compared}); only "
                       f"this tensor at 8 bits over its calibrated range, the others at {wide_bits} bits over all they see",
        "clipped_share": "share of the tensor's values (on these inputs) outside its calibrated range"}}


def _as_list(outputs):
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def format_sensitivity(table: dict, limit: int = 8) -> str:
    """The summary rows and the `limit` most harmful tensors as a text table."""
    from kd_tf.tables import render_table

    rows = table["rows"][:2 + limit]
    return render_table(["tensor at 8 bits", "range", "clipped", "PSNR int8 vs float (dB)"],
                        [[r["tensor"], "" if "range" not in r else f"[{r['range'][0]:.3g}, {r['range'][1]:.3g}]",
                          "" if "clipped_share" not in r else f"{r['clipped_share']:.2e}", f"{r['fidelity_db']:.2f}"]
                         for r in rows])
