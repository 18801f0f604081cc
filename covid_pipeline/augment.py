"""Deterministic rotation augmentation shared by the online and the cached training paths.

The angle for an image in a view is a pure function of (seed, image sha256, view), so the
backbone sees the same rotated picture whether it runs every epoch (``online``) or once
per view (``cached``). View 0 is the un-augmented image; view ``v >= 1`` is rotated by an
angle drawn uniformly in ``[-max_degrees, +max_degrees]`` (what Keras'
``RandomRotation(max_degrees / 360)`` draws).

TensorFlow is imported inside the functions (seconds to import; ingest and the CLI
never need it).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import numpy as np


def rotation_degrees(seed: int, sha256: str, view: int, max_degrees: float) -> float:
    """The rotation of ``sha256``'s image in ``view`` (0 for view 0)."""
    if view == 0 or max_degrees == 0:
        return 0.0
    digest = hashlib.sha256(f"{seed}:{sha256}:{view}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return (2.0 * u - 1.0) * max_degrees


def view_angles(seed: int, shas: Sequence[str], view: int, max_degrees: float) -> np.ndarray:
    """Angles in radians for each image of ``shas`` in ``view``."""
    return np.array(
        [math.radians(rotation_degrees(seed, s, view, max_degrees)) for s in shas],
        dtype=np.float32,
    )


def resize(images, input_size: int):
    """uint8 grey batch → float32 [B,S,S,1] at the model's input size (view-independent)."""
    import tensorflow as tf

    return tf.image.resize(tf.cast(images, tf.float32), (input_size, input_size),
                           method="bilinear", antialias=True)


def rotated_inputs(resized, angles, preprocess: Callable | None):
    """Resized grey batch + angles → rotated three-channel, preprocessed backbone input."""
    import tensorflow as tf

    x = tf.image.grayscale_to_rgb(rotate(resized, angles))
    return preprocess(x) if preprocess is not None else x


def rotate(images, angles):
    """Rotate each image of a float batch [B,H,W,C] by its angle (radians) about its centre."""
    import tensorflow as tf

    shape = tf.shape(images)
    h = tf.cast(shape[1], tf.float32)
    w = tf.cast(shape[2], tf.float32)
    angles = tf.cast(angles, tf.float32)
    cos, sin = tf.cos(angles), tf.sin(angles)
    x_offset = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
    y_offset = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
    zeros = tf.zeros_like(angles)
    transforms = tf.stack([cos, -sin, x_offset, sin, cos, y_offset, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT",
    )
