"""Evaluation of multimodal generative models: per-modality classifiers for coherence."""

from pyro_mmebm.evaluation.classifiers import (
    CLASSIFIERS,
    ImageClassifier,
    LeNetClassifier,
    MNISTClassifier,
    PolyMNISTClassifier,
    SVHNClassifier,
    load_or_train_classifier,
    test_accuracy,
    train_classifier,
)

__all__ = [
    "CLASSIFIERS",
    "ImageClassifier",
    "LeNetClassifier",
    "MNISTClassifier",
    "PolyMNISTClassifier",
    "SVHNClassifier",
    "load_or_train_classifier",
    "test_accuracy",
    "train_classifier",
]
