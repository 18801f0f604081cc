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


def features(n: int, views: int = 3, width: int = 12, seed: int = 0):
    """Separable random features [n, views, width], labels, and held-out features."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    x = (rng.normal(size=(n, views, width)) + labels[:, None, None] * 0.8).astype("float32")
    test_labels = np.arange(21) % 2
    x_test = (rng.normal(size=(21, width)) + test_labels[:, None] * 0.8).astype("float32")
    return x, labels.astype(np.int64), x_test, test_labels.astype(np.int64)


def test_one_fit_per_epoch_makes_the_same_updates_as_one_fit_over_every_batch():
    """The curves need a fit call per epoch; the head must not change for it."""
    import tensorflow as tf

    from covid_pipeline.head import batch_schedule, train_head

    cfg = resolve_config("smoke", epochs=4, batch_size=8)
    x, labels, x_test, test_labels = features(50)
    columns = np.array([0, 1, 2, 1])
    fit = train_head(cfg, 1, x, labels, columns, x_test, test_labels=test_labels)

    import keras

    keras.utils.set_random_seed(cfg.seed)
    net = fresh_head_model(cfg, x.shape[-1])  # the old way: one fit over all batches
    rows, epochs, bounds = batch_schedule(cfg, 1, len(labels))
    index = tf.constant(np.stack([rows, columns[epochs]], axis=1))

    def batch(start, end):
        return (tf.gather_nd(tf.constant(x), index[start:end]),
                tf.gather(tf.constant(labels), index[start:end, 0]))

    batches = tf.data.Dataset.from_tensor_slices(
        (tf.constant(bounds[:-1], tf.int64), tf.constant(bounds[1:], tf.int64))).map(batch)
    net.fit(batches, epochs=1, steps_per_epoch=len(bounds) - 1, verbose=0, shuffle=False)
    np.testing.assert_array_equal(fit.prob, np.asarray(net.predict_on_batch(x_test))[:, 1])


def test_curves_per_epoch_and_held_out_metrics_equal_scikit_learns():
    from sklearn.metrics import accuracy_score, log_loss

    from covid_pipeline.head import train_head

    cfg = resolve_config("smoke", epochs=5, batch_size=8)
    x, labels, x_test, test_labels = features(40)
    fit = train_head(cfg, 0, x, labels, np.array([0, 1, 2, 0, 1]), x_test,
                     test_labels=test_labels)
    assert sorted(fit.curves) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert all(len(v) == 5 for v in fit.curves.values())
    assert fit.curves["loss"][-1] < fit.curves["loss"][0]  # it learns
    # after the last epoch, the held-out metrics are those of the returned probabilities
    prob = np.stack([1 - fit.prob, fit.prob], axis=1)
    assert fit.curves["val_loss"][-1] == pytest.approx(log_loss(test_labels, prob), abs=1e-5)
    assert fit.curves["val_accuracy"][-1] == pytest.approx(
        accuracy_score(test_labels, fit.prob > 0.5))


def test_tensorboard_logs_each_epoch_of_a_head(tmp_path):
    from covid_pipeline.head import train_head
    from covid_pipeline.training import tensorboard

    cfg = resolve_config("smoke", epochs=2, batch_size=8, tensorboard=str(tmp_path / "tb"))
    x, labels, x_test, test_labels = features(24)
    train_head(cfg, 0, x, labels, np.array([0, 1]), x_test, test_labels=test_labels,
               callbacks=tensorboard(cfg, "VGG16", 2, repeat=1))
    run = tmp_path / "tb" / "VGG16" / "repeat-1" / "fold-2"
    assert list((run / "train").glob("events.out.tfevents.*"))
    assert list((run / "validation").glob("events.out.tfevents.*"))


def test_a_head_depends_on_its_own_seeds_not_the_processs_global_ones():
    """train_head sets no global seed (that retraces its functions): whatever the global
    seeds, and whatever ran before it in the worker, the same data give the same head."""
    import keras
    import tensorflow as tf

    from covid_pipeline import head

    cfg = resolve_config("smoke", epochs=3, batch_size=8)
    x, labels, x_test, test_labels = features(40)
    columns = np.array([0, 1, 2])
    first = head.train_head(cfg, 0, x, labels, columns, x_test, test_labels=test_labels)
    for seed, fresh_worker in ((1, False), (12345, True)):
        keras.utils.set_random_seed(seed)  # Python, NumPy, TensorFlow and Keras' global seeds
        tf.random.uniform((3,))  # and their states moved on
        np.random.random(5)
        if fresh_worker:  # the compiled head is built again, as in a new worker process
            head._HEADS.clear()
        again = head.train_head(cfg, 0, x, labels, columns, x_test, test_labels=test_labels)
        np.testing.assert_array_equal(again.prob, first.prob)
        assert again.curves == first.curves
        for a, b in zip(again.weights, first.weights, strict=True):
            np.testing.assert_array_equal(a, b)
