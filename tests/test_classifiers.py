"""Training, accuracy, caching and cache errors of the per-modality classifiers, on synthetic digits."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from torch.utils.data import DataLoader

from pyro_mmebm.evaluation import (
    for_inference,
    CLASSIFIERS,
    MNISTClassifier,
    SVHNClassifier,
    load_or_train_classifier,
    test_accuracy,
    train_classifier,
)

SHAPES = {"mnist": (1, 28, 28), "svhn": (3, 32, 32), "polymnist": (3, 28, 28)}


def pattern_digits(n: int, shape: tuple[int, int, int], seed: int, modality: str = "mnist") -> list:
    """Noisy images whose label ``k`` is the position of a bright block: one of 2 × 5 cells."""
    g = torch.Generator().manual_seed(seed)
    _, height, width = shape
    labels = torch.randint(0, 10, (n,), generator=g)
    images = 0.3 * torch.rand(n, *shape, generator=g)
    for image, k in zip(images, labels.tolist()):
        top, left = (k // 5) * (height // 2), (k % 5) * (width // 5)
        image[:, top : top + height // 2, left : left + width // 5] += 0.7
    return [({modality: image, "other": torch.zeros(2)}, k) for image, k in zip(images, labels.tolist())]


def fail_if_called():
    raise AssertionError("the cached classifier should be reloaded without building a dataset")


@pytest.mark.parametrize("architecture", sorted(CLASSIFIERS))
def test_training_beats_chance(architecture):
    train = pattern_digits(512, SHAPES[architecture], seed=0, modality="m0")
    test = DataLoader(pattern_digits(256, SHAPES[architecture], seed=1, modality="m0"), batch_size=64)
    torch.manual_seed(0)
    model = CLASSIFIERS[architecture]()
    assert test_accuracy(model, test, "m0") < 0.3
    train_classifier(model, train, "m0", epochs=3, lr=3e-3, batch_size=32, progress=False)
    assert not model.training
    assert test_accuracy(model, test, "m0") > 0.9


def test_training_is_seeded_and_restores_rng_state():
    data = pattern_digits(64, SHAPES["mnist"], seed=0)
    states = []
    for _ in range(2):
        torch.manual_seed(1)
        model = MNISTClassifier()
        rng_before = torch.get_rng_state()
        train_classifier(model, data, "mnist", epochs=1, seed=7, batch_size=16, progress=False)
        assert torch.equal(torch.get_rng_state(), rng_before)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@contextlib.contextmanager
def one_thread():
    """Module-scoped fixtures are set up before ``conftest.py``'s per-test one-thread setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """A classifier trained by ``load_or_train_classifier`` into a fresh cache directory."""
    cache_dir = tmp_path_factory.mktemp("classifiers")
    with one_thread():
        model, accuracy = load_or_train_classifier(
            "mnist",
            lambda: pattern_digits(512, SHAPES["mnist"], seed=0),
            lambda: pattern_digits(256, SHAPES["mnist"], seed=1),
            cache_dir,
            epochs=3,
            lr=3e-3,
            batch_size=32,
            seed=3,
            progress=False,
        )
    return cache_dir, model, accuracy


def reload(cache_dir, **settings):
    settings = {"epochs": 3, "lr": 3e-3, "batch_size": 32, "seed": 3, **settings}
    return load_or_train_classifier(
        "mnist", fail_if_called, fail_if_called, cache_dir, progress=False, **settings
    )


def test_cache_is_written_with_info(cached):
    cache_dir, model, accuracy = cached
    assert not model.training and accuracy > 0.9
    assert sorted(p.name for p in cache_dir.iterdir() if not p.name.startswith(".")) == ["mnist_classifier.json", "mnist_classifier.pt"]
    info = json.loads((cache_dir / "mnist_classifier.json").read_text())
    assert info["test_accuracy"] == accuracy
    assert (info["epochs"], info["seed"], info["architecture"]) == (3, 3, "MNISTClassifier")


def test_reload_gives_identical_predictions(cached):
    cache_dir, model, accuracy = cached
    reloaded, reloaded_accuracy = reload(cache_dir)
    assert reloaded is not model and not reloaded.training
    assert reloaded_accuracy == accuracy
    images = torch.rand(16, *SHAPES["mnist"])
    with torch.no_grad():
        assert torch.equal(reloaded(images), model(images))


def test_reload_with_other_settings_warns(cached):
    with pytest.warns(UserWarning, match="different settings"):
        reload(cached[0], epochs=5)


def copy_cache(cache_dir, tmp_path):
    for path in cache_dir.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    return tmp_path


def test_corrupt_weights_name_the_file(cached, tmp_path):
    cache_dir = copy_cache(cached[0], tmp_path)
    (cache_dir / "mnist_classifier.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="mnist_classifier.pt"):
        reload(cache_dir)


def test_weights_of_another_architecture_name_the_file(cached, tmp_path):
    cache_dir = copy_cache(cached[0], tmp_path)
    torch.save(SVHNClassifier().state_dict(), cache_dir / "mnist_classifier.pt")
    with pytest.raises(ValueError, match="mismatched classifier weights .*mnist_classifier.pt"):
        reload(cache_dir)


def test_corrupt_or_missing_info_names_the_file(cached, tmp_path):
    cache_dir = copy_cache(cached[0], tmp_path)
    (cache_dir / "mnist_classifier.json").write_text("{truncated")
    with pytest.raises(ValueError, match="mnist_classifier.json"):
        reload(cache_dir)
    (cache_dir / "mnist_classifier.json").unlink()
    with pytest.raises(ValueError, match="mnist_classifier.json"):
        reload(cache_dir)


def test_unknown_architecture_and_modality_are_named(tmp_path):
    with pytest.raises(ValueError, match="no classifier architecture 'm0'"):
        load_or_train_classifier("m0", fail_if_called, fail_if_called, tmp_path)
    data = pattern_digits(8, SHAPES["svhn"], seed=0, modality="mnist")
    with pytest.raises(KeyError, match="modality 'svhn' not in the batch"):
        train_classifier(SVHNClassifier(), data, "svhn", epochs=1, progress=False)


def test_classifier_rejects_wrong_image_shape():
    expected = r"MNISTClassifier expects images of shape \(B, 1, 28, 28\), got \(2, 3, 32, 32\)"
    with pytest.raises(ValueError, match=expected):
        MNISTClassifier()(torch.rand(2, 3, 32, 32))


def test_runs_side_by_side_train_a_missing_classifier_once(tmp_path):
    import threading

    built = []

    def train_set():
        built.append(threading.current_thread().name)
        return pattern_digits(64, SHAPES["mnist"], seed=0)

    def load(_):
        load_or_train_classifier(
            "mnist", train_set, lambda: pattern_digits(32, SHAPES["mnist"], seed=1), tmp_path,
            epochs=1, batch_size=32, progress=False,
        )

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1  # the others waited for the first and read its cache


@pytest.mark.parametrize("architecture", ["polymnist", "mnist"])
def test_the_inference_copy_gives_the_classifiers_logits(architecture):
    """Batch norm folded into the convolutions, weights channels-last: the same logits (to float
    rounding), the original left as it was."""
    torch.manual_seed(0)
    classifier = CLASSIFIERS[architecture]()
    for module in classifier.modules():  # running statistics away from their initial 0 and 1
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    classifier.eval()
    x = torch.rand(64, *classifier.in_shape)
    fast = for_inference(classifier)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in fast.modules())
    assert any(isinstance(module, torch.nn.BatchNorm2d) for module in classifier.modules()) == (architecture == "polymnist")
    assert not any(p.requires_grad for p in fast.parameters())
    with torch.no_grad():
        torch.testing.assert_close(fast(x), classifier(x), rtol=1e-4, atol=1e-4)
