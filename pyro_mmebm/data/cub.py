"""CUB image-caption pairs, as in MMVAE's CUB release: 64×64 bird images with 10 captions each.

[1] Shi, Siddharth, Paige, Torr (2019) "Variational Mixture-of-Experts Autoencoders for
    Multi-Modal Deep Generative Models" (the CUB image-caption data and its preprocessing).
[2] Reed, Akata, Lee, Schiele (2016) "Learning Deep Representations of Fine-Grained Visual
    Descriptions" (the captions of CUB-200-2011).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from pyro_mmebm._torchvision import datasets, transforms
from pyro_mmebm.atomic import atomic_save_json
from pyro_mmebm.data._files import DatasetFilesNotFoundError, download_and_extract

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, EOS, UNK)
CAPTIONS_PER_IMAGE = 10
TRAIN_CAPTIONS, TEST_CAPTIONS = "text_trainvalclasses.txt", "text_testclasses.txt"
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(sentence: str) -> list[str]:
    """Lower-cased words and punctuation marks: ``"A small bird, red."`` → ``[a, small, bird, ",", red, "."]``.

    MMVAE uses NLTK's ``word_tokenize``; on CUB captions the two differ mainly on contractions
    (``it's`` stays one token here).
    """
    return _TOKEN.findall(sentence.lower())


class Vocabulary:
    """Word ↔ id map for captions: ids 0, 1, 2 are ``<pad>``, ``<eos>``, ``<unk>``, then the words.

    (MMVAE numbers its special tokens ``<exc>`` = 0, ``<pad>`` = 1, ``<eos>`` = 2; padding is 0 here.)

    :param words: the words after the special tokens, in id order.
    """

    pad_id, eos_id, unk_id = 0, 1, 2

    def __init__(self, words: Sequence[str]) -> None:
        self.tokens: tuple[str, ...] = (*SPECIAL_TOKENS, *words)
        self._ids = {token: i for i, token in enumerate(self.tokens)}
        if len(self._ids) != len(self.tokens):
            raise ValueError("vocabulary words must be distinct and differ from the special tokens")

    @classmethod
    def from_sentences(cls, sentences: Iterable[str], min_count: int = 3) -> Vocabulary:
        """The words of ``sentences`` seen at least ``min_count`` times, in order of first appearance.

        MMVAE's code keeps words seen *more than* 3 times: ``min_count=4`` reproduces that.
        """
        counts = Counter(token for sentence in sentences for token in tokenize(sentence))
        return cls([word for word, count in counts.items() if count >= min_count])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, sentence: str, max_length: int = 32) -> Tensor:
        """Ids ``(max_length,)`` int64: the first ``max_length - 1`` tokens, ``<eos>``, then ``<pad>``."""
        ids = [self._ids.get(token, self.unk_id) for token in tokenize(sentence)[: max_length - 1]]
        ids.append(self.eos_id)
        return torch.tensor(ids + [self.pad_id] * (max_length - len(ids)), dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> str:
        """The tokens before the first ``<eos>``, ``<pad>`` left out, joined by spaces."""
        words = []
        for i in ids:
            if i == self.eos_id:
                break
            if i != self.pad_id:
                words.append(self.tokens[i])
        return " ".join(words)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``{"tokens": [...]}`` (all tokens in id order) as JSON, atomically."""
        atomic_save_json({"tokens": list(self.tokens)}, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Read a vocabulary written by :meth:`save`."""
        tokens = json.loads(Path(path).read_text())["tokens"]
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"{path}: a vocabulary starts with {SPECIAL_TOKENS}, got {tokens[:3]}")
        return cls(tokens[len(SPECIAL_TOKENS) :])


CUB_URL = "http://www.robots.ox.ac.uk/~yshi/mmdgm/datasets/cub.zip"
"""MMVAE's CUB image-caption release (Shi et al. 2019): ``cub/{train,test}/<class>/*.jpg`` and captions."""


def find_caption_file(root: str | os.PathLike, name: str) -> Path:
    """``<root>/<name>``, else ``<root>/cub/<name>``, else ``<root>/CUB/<name>``, whichever exists first."""
    candidates = [Path(root) / sub / name for sub in ("", "cub", "CUB")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    listing = "\n".join(f"  {c}" for c in candidates)
    raise DatasetFilesNotFoundError(
        f"CUB captions {name} not found; looked for\n{listing}\n"
        "It comes with MMVAE's CUB release (cub.zip of github.com/iffsid/mmvae), one caption per line; "
        "download=True fetches it."
    )


def read_captions(path: str | os.PathLike) -> list[str]:
    """The lines of a caption file, one caption per line."""
    return Path(path).read_text(encoding="utf-8").splitlines()


class CUBImageCaption(Dataset):
    """CUB bird images with captions [1, 2]: ``({"image": (3, 64, 64), "caption": (32,)}, label)``.

    Files, MMVAE's release layout under ``<cub>`` = ``root``, ``root/cub`` or ``root/CUB`` (the first
    holding the split's caption file): captions ``<cub>/text_trainvalclasses.txt`` (train) and
    ``<cub>/text_testclasses.txt`` (test), one per line, ten per image, in image order; images
    ``<cub>/train/<class>/*.jpg`` and ``<cub>/test/<class>/*.jpg``, whose order (ImageFolder's:
    sorted classes, sorted files) is the captions' image order. ``image_dir`` overrides the image
    folder. Train and test hold different bird classes; ``label`` is the class index in the split.

    Item ``k`` pairs image ``k // 10`` with its caption ``k % 10`` (caption line ``k``), so each
    image appears ten times, once with each caption, as MMVAE's resampling of the images does.
    Images are resized to ``image_size`` and scaled to [0, 1]; captions are
    :meth:`Vocabulary.encode` ids, by default with a vocabulary of the training captions' words
    seen at least ``min_count`` times (so train captions are needed unless ``vocabulary`` is given).

    :param vocabulary: a :class:`Vocabulary` or the path of one saved as JSON.
    :param download: fetch MMVAE's release (:data:`CUB_URL`) into ``root`` when the captions are missing.
    """

    modalities: tuple[str, ...] = ("image", "caption")

    def __init__(
        self,
        root: str | os.PathLike,
        train: bool = True,
        image_dir: str | os.PathLike | None = None,
        vocabulary: Vocabulary | str | os.PathLike | None = None,
        min_count: int = 3,
        max_length: int = 32,
        image_size: int = 64,
        download: bool = False,
    ) -> None:
        split = "train" if train else "test"
        try:
            caption_file = find_caption_file(root, TRAIN_CAPTIONS if train else TEST_CAPTIONS)
        except DatasetFilesNotFoundError:
            if not download:
                raise
            download_and_extract(CUB_URL, root, "CUB")
            caption_file = find_caption_file(root, TRAIN_CAPTIONS if train else TEST_CAPTIONS)
        image_dir = caption_file.parent / split if image_dir is None else Path(image_dir)
        if not image_dir.is_dir():
            raise DatasetFilesNotFoundError(
                f"CUB {split} images not found: expected {image_dir}/<class>/*.jpg "
                "(MMVAE's CUB release layout), or pass image_dir="
            )
        if vocabulary is None:
            vocabulary = Vocabulary.from_sentences(read_captions(find_caption_file(root, TRAIN_CAPTIONS)), min_count)
        elif not isinstance(vocabulary, Vocabulary):
            vocabulary = Vocabulary.load(vocabulary)
        self.vocabulary = vocabulary
        resize = transforms.Resize((image_size, image_size))
        self.images = datasets.ImageFolder(image_dir, transform=transforms.Compose([resize, transforms.ToTensor()]))
        captions = read_captions(caption_file)
        if len(captions) != CAPTIONS_PER_IMAGE * len(self.images):
            raise ValueError(
                f"{caption_file} has {len(captions)} captions but {image_dir} has {len(self.images)} images, "
                f"which need {CAPTIONS_PER_IMAGE} captions each ({CAPTIONS_PER_IMAGE * len(self.images)})"
            )
        self.captions = torch.stack([vocabulary.encode(caption, max_length) for caption in captions])
        self.labels = torch.tensor(self.images.targets).repeat_interleave(CAPTIONS_PER_IMAGE)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> tuple[dict[str, Tensor], int]:
        image, label = self.images[index // CAPTIONS_PER_IMAGE]
        return {"image": image, "caption": self.captions[index]}, label
