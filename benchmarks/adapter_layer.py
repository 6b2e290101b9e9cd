"""Adapter-layer benchmark: one adapted projection, forward + backward.

Isolates the adapter from the model around it: a single projection (BERT's
query/value, Llama-2-7B's q/k/v/o and MLP, Gemma-2B's EinsumDense query) on
a batch of tokens, with the gradient taken with respect to the trainable
weights *and* the input (as inside a network). Methods, timed interleaved,
median of repeats:

- `frozen`: the plain layer, frozen (gradient with respect to the input only);
- `lora`: Keras LoRA r=8 (`enable_lora`);
- `fourierft`: this package's adapted layer, n = 1000, `compute="auto"`;
- `fourierft_dense`, `fourierft_activation`: the same with each compute path
  forced;
- with `--with-peft` (torch backend, Dense shapes): HF PEFT's LoRA r=8 and
  FourierFT n = 1000 layers on a `torch.nn.Linear` of the same shape.

Prints one JSON object with, per shape, the medians and the ratios
`fourierft_over_lora`, `fourierft_over_frozen`, `auto_over_best_path` and,
with PEFT, `fourierft_over_peft_fourierft`. On JAX each Keras method also
reports the memory of its compiled step (`memory_mb`: XLA's temporary
buffers, and the step's outputs, the gradients), exact and free of timing
noise, and `fourierft_temp_over_lora`. With `--peak-memory` (any backend)
each Keras method also runs alone in a fresh process, and `peak_step_mb`
reports how far its compiled steps raise the process's resident memory
(the peak, VmHWM, over four steps, less the resident memory once the layer
and the data exist; the peak is reset there, so building the layer does
not mask it): the step's working memory, compilation included.

Usage:
    python benchmarks/adapter_layer.py --backend torch --with-peft
    python benchmarks/adapter_layer.py --backend jax --quick
    python benchmarks/adapter_layer.py --backend jax --quantize int8
    python benchmarks/adapter_layer.py --backend tensorflow --peak-memory
"""

import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import select_backend  # noqa: E402

select_backend(sys.argv)

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from common import report  # noqa: E402
from common import status_mb  # noqa: E402

import keras_fourierft  # noqa: E402

# name: (layer kind, input features, output shape, batch, sequence length)
SHAPES = {
    "minilm": ("dense", 384, (384,), 32, 64),
    "bert-base": ("dense", 768, (768,), 32, 128),
    "llama-attn-512": ("dense", 4096, (4096,), 1, 512),
    "llama-attn-4096": ("dense", 4096, (4096,), 1, 4096),
    "llama-mlp-512": ("dense", 4096, (11008,), 1, 512),
    "llama-mlp-4096": ("dense", 4096, (11008,), 1, 4096),
    "gemma-query-512": ("einsum", 2048, (8, 256), 1, 512),
    "gemma-query-4096": ("einsum", 2048, (8, 256), 1, 4096),
}
DEFAULT_SHAPES = ["minilm", "bert-base", "llama-attn-512", "gemma-query-512"]
COMPUTE = {
    "fourierft": "auto",
    "fourierft_dense": "dense",
    "fourierft_activation": "activation",
}
KERAS_METHODS = ["frozen", "lora", *COMPUTE]


def keras_layer(method, shape, n_frequency, rank, quantize=None):
    kind, dim, output, _, _ = shape
    if kind == "dense":
        layer = keras.layers.Dense(output[0])
    else:
        layer = keras.layers.EinsumDense("btd,ndh->btnh", (None,) + output)
    layer.build((None, None, dim))
    if quantize:
        layer.quantize(quantize)
    if method == "lora":
        layer.enable_lora(rank)
    elif method in COMPUTE:
        keras_fourierft.enable_fourierft(
            layer, n_frequency=n_frequency, compute_path=COMPUTE[method]
        )
    else:
        layer.trainable = False
    return layer


# `--loss`: with `linear`, loss = sum(y * weight), whose gradient does not
# need y, so a compiler drops the frozen forward matmul (JAX's XLA does; the
# frozen step is then one matmul); `tanh`, loss = sum(tanh(y) * weight), is
# what a layer inside a network sees: forward and backward both run.
LOSSES = {"linear": lambda y: y, "tanh": keras.ops.tanh}
OUTPUT = LOSSES["linear"]


def keras_step(layer, x, weight):
    """Returns `step()`: loss = sum(OUTPUT(layer(x)) * weight), gradients
    w.r.t. the trainable weights and `x`, compiled with the backend's
    compiler."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=False)
        def step(x, weight):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(OUTPUT(layer(x)) * weight)
            return tape.gradient(loss, [x] + layer.trainable_variables)

        x, weight = tf.constant(x), tf.constant(weight)
        return lambda: [g.numpy() for g in step(x, weight)]
    if backend == "jax":
        import jax

        grad, arguments = jax_gradient(layer, x, weight)
        return lambda: jax.block_until_ready(grad(*arguments))
    return torch_step(layer, x, weight)


def jax_gradient(layer, x, weight):
    """The jitted gradient function of the step and its arguments (JAX)."""
    import jax

    trainable = [v.value for v in layer.trainable_variables]
    frozen = [v.value for v in layer.non_trainable_variables]

    # Everything is an argument: closed-over arrays would be folded into
    # constants at compile time.
    def loss(trainable, x, frozen, weight):
        y, _ = layer.stateless_call(trainable, frozen, x)
        return (OUTPUT(y) * weight).sum()

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    arguments = (trainable, jax.numpy.asarray(x), frozen, jax.numpy.asarray(weight))
    return grad, arguments


def jax_memory_mb(layer, x, weight):
    """Memory of the compiled step as XLA plans it: temporaries and outputs."""
    grad, arguments = jax_gradient(layer, x, weight)
    analysis = grad.lower(*arguments).compile().memory_analysis()
    return {
        "temp": analysis.temp_size_in_bytes / 2**20,
        "output": analysis.output_size_in_bytes / 2**20,
    }


def torch_step(module, x, weight):
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(module, torch.nn.Module):
        module.to(device)
    x = torch.as_tensor(x, device=device).requires_grad_(True)
    weight = torch.as_tensor(weight, device=device)
    parameters = [p for p in _torch_parameters(module) if p.requires_grad]

    def step():
        loss = (OUTPUT(module(x)) * weight).sum()
        grads = torch.autograd.grad(loss, [x] + parameters)
        if device == "cuda":
            torch.cuda.synchronize()
        return grads

    return step


def _torch_parameters(module):
    if isinstance(module, keras.layers.Layer):
        return [v.value for v in module.trainable_variables]
    return list(module.parameters())


def peft_layer(method, dim, out, n_frequency, rank):
    import peft
    import torch

    class Projection(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.projection = torch.nn.Linear(dim, out)

        def forward(self, x):
            return self.projection(x)

    if method == "peft_lora":
        config = peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=["projection"])
    else:
        config = peft.FourierFTConfig(
            n_frequency=n_frequency, scaling=150.0, target_modules=["projection"]
        )
    model = peft.get_peft_model(Projection(), config)
    return model.base_model.model


def reset_peak_rss_mb():
    """Resets this process's peak resident memory to the current one (Linux
    `clear_refs`), so that building the layer does not mask the step's peak;
    returns the current resident memory in MB. Freed heap memory goes back
    to the system first (`malloc_trim`): otherwise the step could reuse
    memory freed while building and its peak would not show."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return status_mb("VmRSS")


def step_inputs(shape):
    _, dim, output, batch, length = shape
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, length, dim)).astype("float32")
    weight = rng.normal(size=(batch, length) + output).astype("float32")
    return x, weight


def step_memory(args):
    """Child process: the peak memory one method's steps add (prints JSON)."""
    shape = SHAPES[args.shapes[0]]
    layer = keras_layer(
        args.memory_of, shape, args.n_frequency, args.lora_rank, args.quantize
    )
    x, weight = step_inputs(shape)
    step = keras_step(layer, x, weight)
    before = reset_peak_rss_mb()
    for _ in range(4):
        step()
    print(json.dumps({"peak_step_mb": status_mb("VmHWM") - before}))


def peak_step_mb(method, name, args):
    """Runs `step_memory` for one method and shape in a fresh process."""
    command = [sys.executable, __file__, "--memory-of", method, "--shapes", name]
    command += ["--backend", keras.backend.backend()]
    command += ["--n-frequency", str(args.n_frequency)]
    command += ["--lora-rank", str(args.lora_rank), "--loss", args.loss]
    if args.quantize:
        command += ["--quantize", args.quantize]
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    output = subprocess.run(
        command, env=env, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])["peak_step_mb"]


def case_header(name):
    """The description of one shape that every case reports."""
    _, dim, output, batch, length = SHAPES[name]
    return {
        "shape": name,
        "in_features": dim,
        "out_features": int(np.prod(output)),
        "tokens": batch * length,
    }


def memory_case(name, args):
    """Memory figures of one shape, without timing."""
    peaks = {method: peak_step_mb(method, name, args) for method in KERAS_METHODS}
    return {
        **case_header(name),
        "peak_step_mb": peaks,
        "fourierft_peak_over_lora": peaks["fourierft"] / peaks["lora"],
    }


def shape_case(name, args):
    if args.memory_only:
        return memory_case(name, args)
    shape = SHAPES[name]
    kind, dim, output, _, _ = shape
    x, weight = step_inputs(shape)
    methods = list(KERAS_METHODS)
    if args.with_peft and kind == "dense":
        methods += ["peft_lora", "peft_fourierft"]
    steps, memory = {}, {}
    for method in methods:
        if method.startswith("peft"):
            layer = peft_layer(method, dim, output[0], args.n_frequency, args.lora_rank)
            steps[method] = torch_step(layer, x, weight)
        else:
            layer = keras_layer(
                method, shape, args.n_frequency, args.lora_rank, args.quantize
            )
            steps[method] = keras_step(layer, x, weight)
            if keras.backend.backend() == "jax":
                memory[method] = jax_memory_mb(layer, x, weight)
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    samples = {method: [] for method in methods}
    for _ in range(args.repeats):
        for method in methods:
            start = time.perf_counter()
            for _ in range(args.number):
                steps[method]()
            elapsed = (time.perf_counter() - start) / args.number
            samples[method].append(elapsed * 1000.0)
    times = {method: statistics.median(samples[method]) for method in methods}
    result = {**case_header(name), "median_ms": times}
    best = min(times["fourierft_dense"], times["fourierft_activation"])
    result["fourierft_over_lora"] = times["fourierft"] / times["lora"]
    result["fourierft_over_frozen"] = times["fourierft"] / times["frozen"]
    result["dense_over_lora"] = times["fourierft_dense"] / times["lora"]
    result["activation_over_lora"] = times["fourierft_activation"] / times["lora"]
    result["auto_over_best_path"] = times["fourierft"] / best
    if memory:
        result["memory_mb"] = memory
        result["fourierft_temp_over_lora"] = (
            memory["fourierft"]["temp"] / memory["lora"]["temp"]
        )
    if args.peak_memory:
        result["peak_step_mb"] = {
            method: peak_step_mb(method, name, args) for method in KERAS_METHODS
        }
    if "peft_fourierft" in times:
        result["fourierft_over_peft_fourierft"] = (
            times["fourierft"] / times["peft_fourierft"]
        )
        result["peft_fourierft_over_peft_lora"] = (
            times["peft_fourierft"] / times["peft_lora"]
        )
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES))
    parser.add_argument("--n-frequency", type=int, default=1000)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--with-peft", action="store_true")
    parser.add_argument(
        "--quantize",
        choices=["int8", "int4", "float8"],
        help="quantize the base layer first (Keras layers only)",
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--loss",
        choices=sorted(LOSSES),
        default="linear",
        help="linear: sum(y * w); tanh: sum(tanh(y) * w), forward kept",
    )
    parser.add_argument(
        "--peak-memory",
        action="store_true",
        help="also measure each method's step memory in a fresh process",
    )
    parser.add_argument("--memory-of", choices=KERAS_METHODS)
    parser.add_argument(
        "--memory-only",
        action="store_true",
        help="measure memory only (implies --peak-memory), no timing",
    )
    parser.add_argument("--output")
    args = parser.parse_args()
    global OUTPUT
    OUTPUT = LOSSES[args.loss]
    if args.memory_of:
        step_memory(args)
        return
    args.peak_memory = args.peak_memory or args.memory_only
    if args.with_peft and keras.backend.backend() != "torch":
        parser.error("--with-peft needs --backend torch")
    if args.with_peft and args.quantize:
        parser.error("--quantize applies to Keras layers only, not with --with-peft")
    args.shapes = args.shapes or DEFAULT_SHAPES
    args.repeats, args.number, args.warmup = (5, 1, 1) if args.quick else (11, 2, 2)
    cases = [shape_case(name, args) for name in args.shapes]
    settings = {
        "n_frequency": args.n_frequency,
        "quantize": args.quantize,
        "loss": args.loss,
    }
    report("adapter_layer", {**settings, "cases": cases}, args.output)


if __name__ == "__main__":
    main()
