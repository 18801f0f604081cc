"""The study's head and its training schedule, checked layer by layer."""

from __future__ import annotations

import numpy as np
import pytest

from covid_pipeline.config import resolve_config
from covid_pipeline.head import batch_schedule, build_head, compile_model, fresh_head_model


def test_head_is_dense64_relu_dropout05_dense2_softmax_with_seeded_initialisers():
    import keras

    cfg = resolve_config("paper")
    head = build_head(cfg)
    head.build((None, 128))
    dense, dropout, out = head.layers
    assert [type(layer) for layer in head.layers] == [keras.layers.Dense, keras.layers.Dropout,
                                                       keras.layers.Dense]
    assert (dense.units, dense.activation.__name__) == (64, "relu")
    assert (out.units, out.activation.__name__) == (2, "softmax")
    assert dropout.rate == 0.5 and dropout.seed == cfg.seed + 1
    for layer, seed in ((dense, cfg.seed), (out, cfg.seed + 2)):
        init = layer.kernel_initializer
        assert isinstance(init, keras.initializers.GlorotUniform) and init.seed == seed
        assert layer.use_bias and isinstance(layer.bias_initializer, keras.initializers.Zeros)
    # seeded: two builds start from the same weights
    again = build_head(cfg)
    again.build((None, 128))
    for a, b in zip(head.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_compiled_with_adam_at_the_studys_learning_rate_and_cross_entropy():
    import keras

    cfg = resolve_config("paper")
    net = keras.Sequential([keras.Input((8,)), build_head(cfg)])
    compile_model(net, cfg)
    assert isinstance(net.optimizer, keras.optimizers.Adam)
    assert float(net.optimizer.learning_rate.numpy()) == pytest.approx(0.002)
    assert net.loss == "sparse_categorical_crossentropy"
    other = resolve_config("paper", optimizer="sgd", learning_rate=0.01)
    compile_model(net, other)
    assert isinstance(net.optimizer, keras.optimizers.SGD)
    assert float(net.optimizer.learning_rate.numpy()) == pytest.approx(0.01)


def test_fresh_head_starts_from_its_initial_state_after_training():
    cfg = resolve_config("smoke")
    net = fresh_head_model(cfg, 16)
    initial = [w.copy() for w in net.get_weights()]
    rng = np.random.default_rng(0)
    net.fit(rng.normal(size=(32, 16)).astype("float32"), rng.integers(0, 2, 32), epochs=2,
            verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(initial, net.get_weights(), strict=True))
    again = fresh_head_model(cfg, 16)
    assert again is net
    for a, b in zip(initial, again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(not np.any(v.numpy()) for v in again.optimizer.variables
               if not v.path.endswith("learning_rate"))


def test_batch_schedule_is_each_epochs_seeded_permutation_in_batches():
    cfg = resolve_config("smoke", epochs=3, batch_size=4)
    rows, epochs, bounds = batch_schedule(cfg, 1, 10)
    assert len(rows) == 30 and bounds[-1] == 30
    assert np.diff(bounds).tolist() == [4, 4, 2] * 3
    for e in range(3):
        block = rows[epochs == e]
        assert sorted(block) == list(range(10))
        expected = np.random.default_rng([cfg.seed, 1, e]).permutation(10)
        np.testing.assert_array_equal(block, expected)
    assert not np.array_equal(rows[:10], batch_schedule(cfg, 2, 10)[0][:10])  # per fold
