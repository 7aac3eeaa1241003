"""The data sets, on small files written here (and the real CUB test captions when present)."""

from __future__ import annotations

import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from pyro_mmebm.data import (
    InMemoryBatches,
    MNISTSVHN,
    CUBImageCaption,
    DatasetFilesNotFoundError,
    PolyMNIST,
    Vocabulary,
    generate_polymnist,
    match_by_label,
    strided_subset,
    strided_tensors,
    tokenize,
)
from pyro_mmebm.data import mnist_svhn
from pyro_mmebm.data.polymnist import distinct_permutations, export_png_layout, load_backgrounds

REAL_CUB_TEST_CAPTIONS = Path("/work/shared/data/CUB/text_testclasses.txt")


# ---- small source files -------------------------------------------------------------------------


def write_mnist(root: Path, split: str, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Write MNIST idx files of random images with ``labels``; returns the images."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
    # idx format: big-endian magic (0x08 = ubyte, then the number of dimensions), sizes, data
    (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">4I", 0x803, len(labels), 28, 28) + images.tobytes())
    label_bytes = labels.astype(np.uint8).tobytes()
    (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">2I", 0x801, len(labels)) + label_bytes)
    return images


def write_svhn(root: Path, split: str, digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Write an SVHN ``.mat`` (``X`` (32, 32, 3, N), ``y`` (N, 1), digit 0 stored as 10); returns X."""
    (root / "SVHN").mkdir(parents=True, exist_ok=True)
    x = rng.integers(0, 256, size=(32, 32, 3, len(digits)), dtype=np.uint8)
    y = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
    scipy.io.savemat(root / "SVHN" / f"{split}_32x32.mat", {"X": x, "y": y})
    return x


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> dict:
    """MNIST files with 10 train and 9 test images per digit, shuffled."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("mnist")
    labels = {split: rng.permutation(np.repeat(np.arange(10), n)) for split, n in (("train", 10), ("t10k", 9))}
    images = {split: write_mnist(root, split, labels[split], rng) for split in labels}
    return {"root": root, "images": images, "labels": labels}


@pytest.fixture(scope="module")
def mnist_svhn_root(mnist, tmp_path_factory) -> dict:
    """The MNIST files plus SVHN files with 3 + digit train and 4 test images per digit."""
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("mnist_svhn")
    shutil.copytree(mnist["root"] / "MNIST", root / "MNIST")
    counts = {"train": np.arange(3, 13), "test": 4}
    digits = {split: rng.permutation(np.repeat(np.arange(10), n)) for split, n in counts.items()}
    x = {split: write_svhn(root, split, digits[split], rng) for split in digits}
    return {"root": root, "svhn_x": x, "svhn_digits": digits, **{k: mnist[k] for k in ("images", "labels")}}


@pytest.fixture(scope="module")
def backgrounds(tmp_path_factory) -> Path:
    """Five noise backgrounds of different sizes (noise makes every crop position identifiable)."""
    rng = np.random.default_rng(2)
    folder = tmp_path_factory.mktemp("backgrounds")
    for k, (h, w) in enumerate([(34, 40), (40, 31), (30, 30), (45, 38), (33, 52)]):
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(folder / f"{k + 1}.png")
    return folder


@pytest.fixture(scope="module")
def polymnist(mnist, backgrounds, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("polymnist")
    generate_polymnist(mnist["root"], backgrounds, out, seed=0, export_png=True, progress=False)
    return out


# ---- MNIST-SVHN ---------------------------------------------------------------------------------


def test_match_by_label_pairs_each_kept_example_dm_times():
    labels_a = np.array([0, 1, 0, 1, 0, 2, 0])
    labels_b = np.array([1, 1, 0, 0, 1, 1, 0, 3])
    pairs = match_by_label(labels_a, labels_b, max_per_class=2, pairs_per_example=3, rng=np.random.default_rng(0))
    assert pairs.shape == (2 * 2 * 3, 2)  # classes 0 and 1, 2 examples each (capped), 3 rounds
    assert np.all(labels_a[pairs[:, 0]] == labels_b[pairs[:, 1]])
    # MMVAE keeps the first n examples of each class, each in every round
    assert sorted(pairs[:, 0].tolist()) == sorted([0, 2, 1, 3] * 3)
    assert sorted(pairs[:, 1].tolist()) == sorted([2, 3, 0, 1] * 3)


def test_mnist_svhn_items_are_label_consistent_pairs(mnist_svhn_root):
    data = mnist_svhn_root
    dataset = MNISTSVHN(data["root"], train=True, pairs_per_example=4, max_per_class=8)
    mnist_labels, svhn_digits = data["labels"]["train"], data["svhn_digits"]["train"]
    per_class = [min(10, 3 + c, 8) for c in range(10)]
    assert len(dataset) == 4 * sum(per_class)
    assert dataset.modalities == ("mnist", "svhn")
    assert np.bincount(dataset.labels.numpy()).tolist() == [4 * n for n in per_class]
    for index in range(0, len(dataset), 7):
        images, label = dataset[index]
        i, j = dataset.pairs[index].tolist()
        assert label == mnist_labels[i] == svhn_digits[j]
        assert images["mnist"].shape == (1, 28, 28) and images["svhn"].shape == (3, 32, 32)
        assert images["mnist"].dtype == images["svhn"].dtype == torch.float32
        assert torch.equal(images["mnist"][0] * 255, torch.from_numpy(data["images"]["train"][i]).float())
        # SVHN's X is (row, column, channel, example)
        expected_svhn = torch.from_numpy(data["svhn_x"]["train"][..., j]).permute(2, 0, 1).float()
        assert torch.allclose(images["svhn"] * 255, expected_svhn)
    test = MNISTSVHN(data["root"], train=False, pairs_per_example=2)
    assert len(test) == 2 * 10 * 4
    assert np.all(data["labels"]["t10k"][test.pairs[:, 0]] == data["svhn_digits"]["test"][test.pairs[:, 1]])


def test_mnist_svhn_pairing_is_seeded_and_cached(mnist_svhn_root, tmp_path, monkeypatch):
    root = mnist_svhn_root["root"]
    first = MNISTSVHN(root, pairs_per_example=3, seed=5, cache_dir=tmp_path / "a")
    assert (tmp_path / "a" / "mnist_svhn_train_max10000_dm3_seed5.npy").is_file()
    again = MNISTSVHN(root, pairs_per_example=3, seed=5, cache_dir=tmp_path / "b")
    other = MNISTSVHN(root, pairs_per_example=3, seed=6, cache_dir=tmp_path / "b")
    assert torch.equal(first.pairs, again.pairs)
    assert not torch.equal(first.pairs, other.pairs)

    def fail(*args, **kwargs):
        raise AssertionError("pairs recomputed although cached")

    with monkeypatch.context() as patch:
        patch.setattr(mnist_svhn, "match_by_label", fail)
        cached = MNISTSVHN(root, pairs_per_example=3, seed=5, cache_dir=tmp_path / "a")
    assert torch.equal(cached.pairs, first.pairs)
    # a cache that does not fit the files is recomputed
    stale = tmp_path / "a" / "mnist_svhn_train_max10000_dm3_seed5.npy"
    digits, mnist_labels = mnist_svhn_root["svhn_digits"]["train"], mnist_svhn_root["labels"]["train"]
    np.save(stale, np.array([[0, np.flatnonzero(digits != mnist_labels[0])[0]]] * 5))
    assert torch.equal(MNISTSVHN(root, pairs_per_example=3, seed=5, cache_dir=tmp_path / "a").pairs, first.pairs)
    assert list((tmp_path / "a").iterdir()) == [stale]  # no temporary files left behind


def test_mnist_svhn_missing_files_say_what_to_put_where(mnist_svhn_root, tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        MNISTSVHN(tmp_path)
    assert isinstance(error.value, DatasetFilesNotFoundError)
    message = str(error.value)
    for prefix in ("train", "t10k"):
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            assert str(tmp_path / "MNIST" / "raw" / f"{prefix}-{kind}") in message
    assert "download=True" in message
    shutil.copytree(mnist_svhn_root["root"] / "MNIST", tmp_path / "MNIST")
    with pytest.raises(DatasetFilesNotFoundError, match="download=True") as error:
        MNISTSVHN(tmp_path, train=False)
    assert str(tmp_path / "SVHN" / "test_32x32.mat") in str(error.value)


# ---- PolyMNIST ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n, seed", [(9, 0), (9, 1), (9, 2), (12, 3), (200, 4)])
def test_distinct_permutations(n, seed):
    columns = distinct_permutations(n, 5, np.random.default_rng(seed))
    assert columns.shape == (n, 5)
    assert all(sorted(column) == list(range(n)) for column in columns.T)
    assert all(len(set(row)) == 5 for row in columns)


def test_distinct_permutations_needs_enough_items():
    with pytest.raises(ValueError, match="at least 9"):
        distinct_permutations(8, 5, np.random.default_rng(0))


def find_crop(background: np.ndarray, digit: np.ndarray, image: np.ndarray) -> list[tuple[int, int]]:
    """All top-left corners, in the recipe's range, at which ``image`` is the recipe's composition."""
    h, w = background.shape[:2]
    windows = sliding_window_view(background, (28, 28, 3))[: h - 28, : w - 28, 0]
    composed = np.where(digit[None, None, :, :, None] > 128, 255 - windows, windows)
    return [tuple(corner) for corner in np.argwhere((composed == image).all(axis=(2, 3, 4)))]


@pytest.mark.parametrize("split, mnist_split", [("train", "train"), ("test", "t10k")])
def test_generated_polymnist_follows_the_recipe(polymnist, mnist, backgrounds, split, mnist_split):
    images = np.load(polymnist / f"{split}_images.npy")
    labels = np.load(polymnist / f"{split}_labels.npy")
    sources = np.load(polymnist / f"{split}_sources.npy")
    mnist_images, mnist_labels = mnist["images"][mnist_split], mnist["labels"][mnist_split]
    assert images.shape == (len(mnist_labels), 5, 28, 28, 3) and images.dtype == np.uint8
    assert np.array_equal(labels, np.sort(mnist_labels))  # grouped by digit
    assert np.all(mnist_labels[sources] == labels[:, None])  # five images of the tuple's digit...
    assert all(len(set(row)) == 5 for row in sources)  # ...all different...
    assert all(sorted(column) == list(range(len(labels))) for column in sources.T)  # ...each once per modality
    backgrounds_rgb = load_backgrounds(backgrounds)
    for index in range(0, len(labels), 9):
        for m in range(5):
            assert len(find_crop(backgrounds_rgb[m], mnist_images[sources[index, m]], images[index, m])) == 1


def test_polymnist_generation_is_deterministic(polymnist, mnist, backgrounds, tmp_path):
    generate_polymnist(mnist["root"], backgrounds, tmp_path / "same", seed=0, splits=("test",), progress=False)
    generate_polymnist(mnist["root"], backgrounds, tmp_path / "other", seed=1, splits=("test",), progress=False)
    reference = np.load(polymnist / "test_images.npy")
    assert np.array_equal(np.load(tmp_path / "same" / "test_images.npy"), reference)
    assert not np.array_equal(np.load(tmp_path / "other" / "test_images.npy"), reference)
    written = sorted(p.name for p in (tmp_path / "same").iterdir())
    assert written == ["test_images.npy", "test_labels.npy", "test_sources.npy"]
    with pytest.raises(FileExistsError):
        generate_polymnist(mnist["root"], backgrounds, polymnist, splits=("test",), export_png=True, progress=False)


def test_polymnist_dataset_reads_arrays_and_png_layout(polymnist, tmp_path):
    images = np.load(polymnist / "train_images.npy")
    dataset = PolyMNIST(polymnist, train=True)
    assert dataset.modalities == ("m0", "m1", "m2", "m3", "m4")
    assert len(dataset) == len(images) == 100
    unpickled = pickle.loads(pickle.dumps(dataset))
    assert len(pickle.dumps(dataset)) < 20_000  # the memory map travels as its path
    assert torch.equal(unpickled[42][0]["m2"], dataset[42][0]["m2"])
    shutil.copytree(polymnist / "train", tmp_path / "train")  # the exported PNG layout alone
    from_png = PolyMNIST(tmp_path, train=True)
    assert torch.equal(from_png.labels, dataset.labels)
    for index in (0, 37, 99):
        item, label = dataset[index]
        png_item, png_label = from_png[index]
        assert label == png_label == int(dataset.labels[index])
        for m, name in enumerate(dataset.modalities):
            assert item[name].shape == (3, 28, 28) and item[name].dtype == torch.float32
            assert torch.equal(item[name] * 255, torch.from_numpy(images[index, m]).permute(2, 0, 1).float())
            assert torch.equal(png_item[name], item[name])


def test_polymnist_generates_when_asked(polymnist, mnist, backgrounds, tmp_path):
    with pytest.raises(DatasetFilesNotFoundError, match="generate_from"):
        PolyMNIST(tmp_path, train=False)
    dataset = PolyMNIST(tmp_path, train=False, generate_from=(mnist["root"], backgrounds))
    assert len(dataset) == 90 and not (tmp_path / "train_images.npy").exists()
    assert np.array_equal(np.load(tmp_path / "test_images.npy"), np.load(polymnist / "test_images.npy"))


def write_png_layout(split_dir: Path, labels: list[int], size: tuple[int, int] = (28, 28)) -> None:
    rng = np.random.default_rng(3)
    for m in range(5):
        (split_dir / f"m{m}").mkdir(parents=True)
        for index, label in enumerate(labels):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(split_dir / f"m{m}" / f"{index}.{label}.png")


def test_polymnist_png_layout_errors(tmp_path):
    labels = [3, 1, 4, 1, 5, 9]

    def layout(name: str) -> Path:
        write_png_layout(tmp_path / name / "test", labels)
        return tmp_path / name

    assert PolyMNIST(layout("good"), train=False).labels.tolist() == labels
    root = layout("missing_folder")
    shutil.rmtree(root / "test" / "m3")
    with pytest.raises(DatasetFilesNotFoundError, match="m3"):
        PolyMNIST(root, train=False)
    root = layout("missing_file")
    (root / "test" / "m2" / "4.5.png").unlink()
    with pytest.raises(ValueError, match="has 5 images but .* has 6"):
        PolyMNIST(root, train=False)
    root = layout("other_index")
    (root / "test" / "m2" / "4.5.png").rename(root / "test" / "m2" / "7.5.png")
    with pytest.raises(ValueError, match="index 4 is in only one"):
        PolyMNIST(root, train=False)
    root = layout("other_label")
    (root / "test" / "m4" / "2.4.png").rename(root / "test" / "m4" / "2.7.png")
    with pytest.raises(ValueError, match="index 2 has label 4 .* but 7"):
        PolyMNIST(root, train=False)
    root = layout("bad_name")
    (root / "test" / "m1" / "notes.png").write_bytes(b"")
    with pytest.raises(ValueError, match="unexpected file name"):
        PolyMNIST(root, train=False)
    root = layout("corrupt")
    (root / "test" / "m1" / "3.1.png").write_bytes(b"not a png")
    dataset = PolyMNIST(root, train=False)
    dataset[2]
    with pytest.raises(ValueError, match="corrupt PolyMNIST image .*3.1.png"):
        dataset[3]
    root = layout("wrong_size")
    Image.new("RGB", (30, 28)).save(root / "test" / "m0" / "5.9.png")
    with pytest.raises(ValueError, match="5.9.png is 30×28, expected 28×28"):
        PolyMNIST(root, train=False)[5]


def test_export_png_layout_round_trip(tmp_path):
    images = np.random.default_rng(4).integers(0, 256, size=(3, 5, 28, 28, 3), dtype=np.uint8)
    export_png_layout(images, np.array([2, 0, 2]), tmp_path / "train", progress=False)
    assert sorted(p.name for p in (tmp_path / "train" / "m4").iterdir()) == ["0.2.png", "1.0.png", "2.2.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["train"]
    item, label = PolyMNIST(tmp_path)[1]
    assert label == 0
    assert torch.equal(item["m3"] * 255, torch.from_numpy(images[1, 3]).permute(2, 0, 1).float())


def test_backgrounds_must_be_five(backgrounds, tmp_path):
    for k in range(4):
        shutil.copy(backgrounds / f"{k + 1}.png", tmp_path)
    with pytest.raises(DatasetFilesNotFoundError, match="exactly 5 background images .* found 4"):
        load_backgrounds(tmp_path)


def test_strided_subset_covers_every_digit(polymnist):
    dataset = PolyMNIST(polymnist, train=False)  # 9 tuples per digit, grouped
    subset = strided_subset(dataset, 20)
    assert sorted(set(dataset.labels[: 20].tolist())) == [0, 1, 2]
    assert np.bincount([subset[i][1] for i in range(len(subset))]).tolist() == [2] * 10
    assert subset.indices == sorted(set(subset.indices))
    assert len(strided_subset(dataset, len(dataset))) == len(dataset)
    with pytest.raises(ValueError):
        strided_subset(dataset, 0)
    with pytest.raises(ValueError):
        strided_subset(dataset, len(dataset) + 1)
    # The same items from the tensors in memory.
    images, labels = dataset.tensors()
    strided_images, strided_labels = strided_tensors(images, labels, 20)
    assert strided_labels.tolist() == [subset[i][1] for i in range(len(subset))]
    assert torch.equal(strided_images["m0"], images["m0"][subset.indices])
    with pytest.raises(ValueError):
        strided_tensors(images, labels, 0)


# ---- CUB ----------------------------------------------------------------------------------------


def test_vocabulary_encode_decode_save_load(tmp_path):
    assert tokenize("A small bird, with a RED crown.") == ["a", "small", "bird", ",", "with", "a", "red", "crown", "."]
    sentences = ["a red bird .", "a blue bird .", "a red bird with a red crown ."]
    vocabulary = Vocabulary.from_sentences(sentences, min_count=3)
    assert vocabulary.tokens == ("<pad>", "<eos>", "<unk>", "a", "red", "bird", ".")
    assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2)
    ids = vocabulary.encode("A red crown.", max_length=8)
    assert ids.dtype == torch.long and ids.tolist() == [3, 4, 2, 6, 1, 0, 0, 0]
    assert vocabulary.decode(ids) == "a red <unk> ."
    long = vocabulary.encode(" ".join(["bird"] * 40))
    assert long.shape == (32,) and long.tolist() == [5] * 31 + [1]
    vocabulary.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json").tokens == vocabulary.tokens
    (tmp_path / "bad.json").write_text('{"tokens": ["a", "b", "c"]}')
    with pytest.raises(ValueError, match="starts with"):
        Vocabulary.load(tmp_path / "bad.json")


def write_cub_images(image_dir: Path, images_per_class: list[int]) -> list[tuple[int, int, int]]:
    """Solid-colour PNGs of varying sizes in ``<class>/`` folders; returns the colours in ImageFolder order."""
    colours = []
    for c, count in enumerate(images_per_class):
        (image_dir / f"{c:03d}.Bird_{c}").mkdir(parents=True)
        for k in range(count):
            colour = (len(colours) % 256, 255 - len(colours) % 256, (7 * c) % 256)
            Image.new("RGB", (20 + k, 17 + c), colour).save(image_dir / f"{c:03d}.Bird_{c}" / f"img_{k:04d}.png")
            colours.append(colour)
    return colours


@pytest.fixture
def cub_root(tmp_path) -> Path:
    """MMVAE's layout, fully generated: 3 train classes of 2 images, 2 test classes of 2 images."""
    cub = tmp_path / "cub"
    train_colours = write_cub_images(cub / "train", [2, 2, 2])
    test_colours = write_cub_images(cub / "test", [2, 2])
    (cub / "text_trainvalclasses.txt").write_text(
        "\n".join(f"this bird number {i} has a red crown." for i in range(10 * len(train_colours))) + "\n"
    )
    (cub / "text_testclasses.txt").write_text(
        "\n".join(f"this grebe has a long neck and a red crown {i}." for i in range(10 * len(test_colours))) + "\n"
    )
    return tmp_path


def test_cub_pairs_each_image_with_its_ten_captions(cub_root):
    for root in (cub_root, cub_root / "cub"):
        dataset = CUBImageCaption(root, train=True)
        assert dataset.modalities == ("image", "caption")
        assert len(dataset) == 60
    lines = (cub_root / "cub" / "text_trainvalclasses.txt").read_text().splitlines()
    for index in (0, 9, 10, 27, 59):
        item, label = dataset[index]
        assert label == index // 20  # 2 images of 10 captions per class
        assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
        expected_colour = torch.tensor([index // 10, 255 - index // 10, 7 * label], dtype=torch.float32)
        assert torch.equal(item["image"][:, 5, 7] * 255, expected_colour)
        assert torch.equal(item["caption"], dataset.vocabulary.encode(lines[index]))
    assert dataset.vocabulary.decode(dataset[27][0]["caption"]) == "this bird number <unk> has a red crown ."
    test = CUBImageCaption(cub_root, train=False)  # vocabulary from the training captions
    assert test.vocabulary.tokens == dataset.vocabulary.tokens
    assert test.vocabulary.decode(test[13][0]["caption"]) == "this <unk> has a <unk> <unk> <unk> a red crown <unk> ."
    assert test.labels.tolist() == [0] * 20 + [1] * 20


def test_cub_errors(cub_root, tmp_path_factory):
    cub = cub_root / "cub"
    lines = (cub / "text_testclasses.txt").read_text().splitlines()
    (cub / "text_testclasses.txt").write_text("\n".join(lines[:-1]))
    with pytest.raises(ValueError, match="has 39 captions but .* has 4 images, which need 10 captions each"):
        CUBImageCaption(cub_root, train=False)
    with pytest.raises(DatasetFilesNotFoundError, match="test images not found"):
        CUBImageCaption(cub_root, train=False, image_dir=cub_root / "nowhere")
    vocabulary = CUBImageCaption(cub_root).vocabulary
    vocabulary.save(cub_root / "vocab.json")
    (cub / "text_trainvalclasses.txt").unlink()
    (cub / "text_testclasses.txt").write_text("\n".join(lines))
    with pytest.raises(DatasetFilesNotFoundError, match="text_trainvalclasses.txt"):
        CUBImageCaption(cub_root, train=False)
    loaded = CUBImageCaption(cub_root, train=False, vocabulary=cub_root / "vocab.json").vocabulary
    assert loaded.tokens == vocabulary.tokens
    with pytest.raises(DatasetFilesNotFoundError, match="text_testclasses.txt not found"):
        CUBImageCaption(tmp_path_factory.mktemp("empty"), train=False)


@pytest.mark.skipif(not REAL_CUB_TEST_CAPTIONS.is_file(), reason="real CUB test captions not present")
def test_cub_real_test_captions(tmp_path):
    lines = REAL_CUB_TEST_CAPTIONS.read_text().splitlines()
    assert len(lines) == 29330
    colours = write_cub_images(tmp_path, [59] * 49 + [2933 - 59 * 49])
    vocabulary = Vocabulary.from_sentences(lines)
    root = REAL_CUB_TEST_CAPTIONS.parent.parent  # <root>/CUB/text_testclasses.txt
    dataset = CUBImageCaption(root, train=False, image_dir=tmp_path, vocabulary=vocabulary)
    assert len(dataset) == 29330 and len(colours) == 2933
    assert 1000 < len(vocabulary) < 5000
    filled = sum(len(tokenize(line)) >= 31 for line in lines)  # 31 words and <eos>, or cut to that
    assert 0 < filled < len(lines) // 10
    assert int((dataset.captions[:, -1] != vocabulary.pad_id).sum()) == filled
    for index in (0, 12345, 29329):
        item, label = dataset[index]
        assert label == min(index // 10 // 59, 49)
        assert torch.equal(item["image"][:, 0, 0] * 255, torch.tensor(colours[index // 10], dtype=torch.float32))
        words = [w if w in vocabulary.tokens else "<unk>" for w in tokenize(lines[index])[:31]]
        assert vocabulary.decode(item["caption"]) == " ".join(words)


def test_polymnist_download_unpacks_the_official_release(tmp_path, monkeypatch):
    from urllib.error import URLError

    from pyro_mmebm._torchvision import datasets
    from pyro_mmebm.data import polymnist as polymnist_module

    fetched = []

    def fake_release(url, download_root, remove_finished):
        # The release unpacks into PolyMNIST/{train,test}/m0..m4/<index>.<label>.png.
        fetched.append(url)
        for split, labels in (("train", [3, 1]), ("test", [7])):
            write_png_layout(Path(download_root) / "PolyMNIST" / split, labels)

    monkeypatch.setattr(datasets.utils, "download_and_extract_archive", fake_release)
    data = PolyMNIST(tmp_path / "poly", train=False, download=True)
    assert fetched == [polymnist_module.POLYMNIST_URL]
    assert len(data) == 1 and data[0][1] == 7 and data[0][0]["m4"].shape == (3, 28, 28)
    assert len(PolyMNIST(tmp_path / "poly", train=True)) == 2  # both splits were adopted

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(datasets.utils, "download_and_extract_archive", offline)
    with pytest.raises(DatasetFilesNotFoundError, match="download of .*PolyMNIST.zip failed.*by hand"):
        PolyMNIST(tmp_path / "elsewhere", download=True)


def test_cub_download_fetches_mmvae_release(cub_root, tmp_path, monkeypatch):
    from pyro_mmebm._torchvision import datasets
    from pyro_mmebm.data import cub as cub_module

    fetched = []

    def fake_release(url, download_root, remove_finished):
        fetched.append(url)
        shutil.copytree(cub_root / "cub", Path(download_root) / "cub")

    monkeypatch.setattr(datasets.utils, "download_and_extract_archive", fake_release)
    with pytest.raises(DatasetFilesNotFoundError, match="download=True"):
        CUBImageCaption(tmp_path / "fresh")
    data = CUBImageCaption(tmp_path / "fresh", download=True)
    assert fetched == [cub_module.CUB_URL] and len(data) == 60


def test_in_memory_batches_equal_the_data_set_items(polymnist):
    dataset = PolyMNIST(polymnist, train=True)
    modalities, labels = dataset.tensors()
    assert all(x.dtype == torch.uint8 and x.shape == (100, 3, 28, 28) for x in modalities.values())
    batches = InMemoryBatches(modalities, labels, 32, shuffle=False)
    assert len(batches) == 4
    seen = 0
    for batch, batch_labels in batches:
        for offset, label in enumerate(batch_labels.tolist()):
            item, item_label = dataset[seen + offset]
            assert label == item_label
            for name in dataset.modalities:
                assert torch.equal(batch[name][offset], item[name])  # the same float32 values
        seen += len(batch_labels)
    assert seen == 100


def test_in_memory_batches_shuffle_and_epoch_size(polymnist):
    modalities, labels = PolyMNIST(polymnist, train=True).tensors()
    batches = InMemoryBatches(modalities, labels, 16, epoch_size=40, drop_last=True)
    assert len(batches) == 2
    torch.manual_seed(0)
    first = torch.cat([y for _, y in batches])
    torch.manual_seed(0)
    again = torch.cat([y for _, y in batches])
    second = torch.cat([y for _, y in batches])
    assert len(first) == 32 and torch.equal(first, again)  # the order follows torch's random stream
    assert not torch.equal(first, second)  # and is fresh every epoch
    order = torch.cat([x["m0"][:, 0, 0, 0] for x, _ in InMemoryBatches(modalities, labels, 100)])
    assert sorted(order.tolist()) == sorted(modalities["m0"][:, 0, 0, 0].float().div(255).tolist())


def test_in_memory_batches_reject_bad_settings(polymnist):
    modalities, labels = PolyMNIST(polymnist, train=True).tensors()
    with pytest.raises(ValueError, match="different numbers"):
        InMemoryBatches({"a": modalities["m0"], "b": modalities["m1"][:50]}, None, 8)
    with pytest.raises(ValueError, match="epoch_size"):
        InMemoryBatches(modalities, labels, 8, epoch_size=101)
    with pytest.raises(ValueError, match="batch_size"):
        InMemoryBatches(modalities, labels, 0)
