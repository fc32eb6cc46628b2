"""The digit classifier whose penultimate layer is the feature space of FID and KID (kd_tf.metrics).

FID's Inception-v3 knows nothing of 28x28 digits and would need a download; a small CNN trained on
the digits themselves gives features that separate what matters here (which digit, how it is drawn).
Input: (28, 28, 1) in [0, 1]; the 128-d layer `features` is what the metrics read.
"""

from __future__ import annotations

import keras
from keras import layers

FEATURE_LAYER = "features"


def build_classifier(classes: int = 10, name: str = "feature_classifier") -> keras.Model:
    image = keras.Input(shape=(28, 28, 1), name="image")
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv0")(image)
    x = layers.MaxPooling2D(name="pool0")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(128, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.GlobalAveragePooling2D(name="pool2")(x)
    x = layers.Dense(128, activation="relu", name=FEATURE_LAYER)(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    logits = layers.Dense(classes, name="logits")(x)
    return keras.Model(image, logits, name=name)


def feature_extractor(classifier: keras.Model) -> keras.Model:
    """image -> the penultimate 128-d features (FID/KID space)."""
    if FEATURE_LAYER not in [layer.name for layer in classifier.layers]:
        raise ValueError(f"classifier {classifier.name!r} has no layer {FEATURE_LAYER!r}; "
                         f"expected one built by kd_tf.nets.classifier.build_classifier")
    return keras.Model(classifier.inputs, classifier.get_layer(FEATURE_LAYER).output, name="digit_features")
