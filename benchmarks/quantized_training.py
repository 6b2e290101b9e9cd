"""QLoRA-style training on a real LLM: FourierFT on an int8 SmolLM2 vs a float one.

SmolLM2-135M-Instruct (converted offline by `examples/smollm2.py`) learns the
number-words task of `examples/instruct_llm.py` with FourierFT (n = 1000,
zero-initialized) on every query and value projection, for `--steps` Adam
steps on the same batches, from three bases:

- `float`: the float32 model;
- `int8`: `backbone.quantize("int8")` before `enable_fourierft` (every
  Dense/EinsumDense and the tied token embedding, which computes the logits);
- `int8_keras_gradient`: the same, with Keras's own gradient of the int8
  logits path (the package's straight-through gradient switched off), which
  is how an int8 causal LM trained before the package gave it one.

Reports each base's training loss per step (the answer tokens only) and the
cosine between its first gradient of the coefficients and the float base's.

Usage:
    python benchmarks/quantized_training.py --backend jax [--quick] [--output f.json]
"""

import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
sys.path.insert(0, __file__.rsplit("/", 2)[0])
from common import select_backend  # noqa: E402

select_backend(sys.argv)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import unittest.mock  # noqa: E402

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
from common import report  # noqa: E402

import keras_fourierft  # noqa: E402
from examples import instruct_llm  # noqa: E402
from examples import smollm2  # noqa: E402
from keras_fourierft import keras_internals  # noqa: E402

BASES = ("float", "int8", "int8_keras_gradient")


def batches(tokenizer, steps, batch_size):
    pairs, _ = instruct_llm.number_words_data(steps * batch_size, 0)
    end_id = tokenizer.token_to_id("<|im_end|>")
    return instruct_llm.training_arrays(tokenizer, pairs, end_id, end_id)


def adapted(folder, base):
    """SmolLM2 on `base`, FourierFT enabled, as a `Llama3CausalLM` on token ids."""
    causal_lm = smollm2.load_causal_lm(folder, instruct_llm.SEQUENCE_LENGTH)
    if base != "float":
        causal_lm.backbone.quantize("int8")
    patch = contextlib.nullcontext()
    if base == "int8_keras_gradient":
        patch = unittest.mock.patch.object(
            keras_internals, "give_logits_an_input_gradient", lambda layer: None
        )
    with patch:
        keras_fourierft.enable_fourierft(
            causal_lm.backbone,
            n_frequency=1000,
            target_layer_names=instruct_llm.TARGETS,
            coefficient_initializer="zeros",
        )
    return keras_hub.models.Llama3CausalLM(
        backbone=causal_lm.backbone, preprocessor=None
    )


def first_gradient(trainer, x, y, weights):
    """The coefficients' gradient on one batch: minus one plain SGD step."""
    trainer.compile(
        optimizer=keras.optimizers.SGD(1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    layers = keras_fourierft.fourierft_layers(trainer.backbone).values()
    trainer.train_on_batch(x, y, sample_weight=weights)
    stepped = [keras.ops.convert_to_numpy(layer.coefficients) for layer in layers]
    for layer in layers:  # back to the zero start
        layer.coefficients.assign(np.zeros(layer.coefficients.shape, "float32"))
    return -np.concatenate([np.ravel(value) for value in stepped])


def rows(data, part):
    """The `(x, y, sample_weight)` rows `part` of the training arrays."""
    x, y, weights = data
    return {key: value[part] for key, value in x.items()}, y[part], weights[part]


def curve(trainer, data, steps, batch_size, learning_rate):
    trainer.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    losses = []
    for step in range(steps):
        x, y, weights = rows(data, slice(step * batch_size, (step + 1) * batch_size))
        loss = trainer.train_on_batch(x, y, sample_weight=weights)
        losses.append(float(np.asarray(loss).ravel()[0]))
        print(f"  step {step + 1}/{steps}: loss {losses[-1]:.4f}", flush=True)
    return losses


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--model-dir", default="outputs/models")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch_size = 3, 4
    folder = smollm2.convert_cached(args.model_dir)
    results, gradients = {}, {}
    tokenizer = keras_hub.models.Llama3Tokenizer.from_preset(str(folder))
    data = batches(tokenizer, args.steps, args.batch_size)
    first = rows(data, slice(0, args.batch_size))
    for base in BASES:
        print(f"{base} base:", flush=True)
        keras.utils.set_random_seed(0)
        trainer = adapted(folder, base)
        gradients[base] = first_gradient(trainer, *first)
        results[base] = curve(
            trainer, data, args.steps, args.batch_size, args.learning_rate
        )
    reference = gradients["float"]
    cosine = {
        base: float(
            np.dot(g, reference) / (np.linalg.norm(g) * np.linalg.norm(reference))
        )
        for base, g in gradients.items()
    }
    report(
        "quantized_training",
        {
            "model": "SmolLM2-135M-Instruct",
            "targets": instruct_llm.TARGETS,
            "n_frequency": 1000,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "loss": results,
            "loss_drop": {base: c[0] - c[-1] for base, c in results.items()},
            "first_gradient_cosine_with_float": cosine,
        },
        args.output,
    )


if __name__ == "__main__":
    main()
