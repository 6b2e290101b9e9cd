"""Training step on several JAX devices (DataParallel) against one device.

A KerasHub BERT classifier (random weights; default MiniLM-L6 shapes: 6
layers x 384, batch 32 x 64 tokens) with FourierFT on query and value. The
same global batch trains one compiled step (`train_on_batch`) on one device
and, under `keras.distribution.DataParallel`, split over `--devices` devices;
steps alternate between the two, warm-up steps excluded, and the median of
repeats is reported with the ratio `data_parallel_over_one_device`.

On a CPU the devices are virtual (`--xla_force_host_platform_device_count`):
they share the machine's cores, so the ratio measures what splitting the
batch costs or saves there, not the scaling of real accelerators.

Prints one JSON object (also written with `--output`).

Usage:
    python benchmarks/distributed_step.py
    python benchmarks/distributed_step.py --devices 2 --quick
"""

import argparse
import os
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=6)
    parser.add_argument("--hidden-dim", type=int, default=384)
    parser.add_argument("--num-heads", type=int, default=12)
    parser.add_argument("--n-frequency", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--number", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 repeats of 1 step")
    parser.add_argument("--backend", default="jax", help="only jax")
    parser.add_argument("--output")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.backend != "jax":
        sys.exit("keras.distribution runs on JAX: use --backend jax.")
    os.environ["KERAS_BACKEND"] = "jax"
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (
        f"{flags} --xla_force_host_platform_device_count={args.devices}"
    )
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import jax
    import keras
    from common import median_ms
    from common import minilm_classifier
    from common import report
    from common import token_inputs

    import keras_fourierft

    if args.quick:
        args.repeats, args.number = 3, 1
    devices = keras.distribution.list_devices()[: args.devices]
    if len(devices) < args.devices or args.batch % args.devices:
        sys.exit(
            f"Needs {args.devices} devices (found {len(jax.devices())}) and a "
            "batch divisible by their number."
        )
    x, y = token_inputs(args.batch, args.sequence_length)

    def build():
        model = minilm_classifier(args.num_layers, args.hidden_dim, args.num_heads)
        keras_fourierft.enable_fourierft(model, n_frequency=args.n_frequency)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return model

    one_device = build()
    mesh = keras.distribution.DeviceMesh((args.devices,), ("batch",), devices)
    distribution = keras.distribution.DataParallel(device_mesh=mesh)
    with distribution.scope():
        data_parallel = build()

    def step_one():
        one_device.train_on_batch(x, y)

    def step_data_parallel():
        with distribution.scope():
            data_parallel.train_on_batch(x, y)

    for _ in range(2):  # compile and warm up
        step_one()
        step_data_parallel()
    samples = {"one_device": [], "data_parallel": []}
    for _ in range(args.repeats):
        samples["one_device"].append(median_ms(step_one, 1, args.number))
        samples["data_parallel"].append(median_ms(step_data_parallel, 1, args.number))
    medians = {name: sorted(s)[len(s) // 2] for name, s in samples.items()}
    return report(
        "distributed_step",
        {
            "platform": jax.default_backend(),
            "devices": args.devices,
            "virtual_cpu_devices": jax.default_backend() == "cpu",
            "shapes": {
                "num_layers": args.num_layers,
                "hidden_dim": args.hidden_dim,
                "num_heads": args.num_heads,
                "batch": args.batch,
                "sequence_length": args.sequence_length,
                "n_frequency": args.n_frequency,
            },
            "median_ms": medians,
            "data_parallel_over_one_device": medians["data_parallel"]
            / medians["one_device"],
        },
        args.output,
    )


if __name__ == "__main__":
    main()
