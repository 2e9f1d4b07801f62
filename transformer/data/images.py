"""Image classification data: the `sklearn_digits` TFDS builder and the Grain pipeline.

Datasets: `sklearn_digits` (the 1,797 8 x 8 handwritten digits that ship inside
scikit-learn, no download; fixed seeded train/validation/test splits) or a TFDS catalog set with
`image` and `label` features (`mnist`, `cifar10`, ... by name: they download). Images
are stored as PNG (encoded with PIL) and decoded by TFDS with numpy/PIL: no TensorFlow.

Batches (numpy): images float32 [B, H, W, C] in [-1, 1]; targets int32 [B, 1] (the
label: a classifier scores one target per row with the project's one loss, `step.loss_sums`,
so top-1 accuracy is its `accuracy`); targets_segment_ids int32 [B, 1] of ones (every
label counts, label 0 included); evaluation batches also `valid` and `index`, as text.
Training augmentation (options of `DataConfig`): a random crop of the image padded by
`image_crop_padding` pixels (zeros, i.e. -1 after scaling), a random horizontal flip
(`image_flip`), each drawn per example from the seed and the example's position, so a
resumed iterator draws the same ones.
"""

from __future__ import annotations

import functools
import io
import math
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from transformer.data import sources
from transformer.data.config import DataConfig
from transformer.data.synthetic import ArrayRecordBuilder

DIGITS_TEST_EXAMPLES = 360  # of 1,797: the classic 80/20 split
DIGITS_VALIDATION_EXAMPLES = 180  # of the other 1,437, for choosing settings; train: 1,257
DIGITS_SPLIT_SEED = 0


def _png(image_HWC: np.ndarray) -> bytes:
  from PIL import Image  # noqa: PLC0415  (TFDS encodes numpy images with TensorFlow; PIL not)
  buffer = io.BytesIO()
  Image.fromarray(image_HWC[..., 0] if image_HWC.shape[-1] == 1 else image_HWC).save(
      buffer, format="png")
  return buffer.getvalue()


class SklearnDigits(ArrayRecordBuilder):
  """scikit-learn's 8 x 8 handwritten digits (UCI optdigits test set), grey levels 0-16
  scaled to 0-255; one seeded permutation fixes the splits: test its first 360 images,
  validation the next 180, train the other 1,257."""
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
      "1.0.0": "train 1,437 and test 360 images.",
      "2.0.0": "A validation split of 180 images carved from 1.0.0's train; test unchanged.",
  }

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__, disable_shuffling=True,
        supervised_keys=("image", "label"),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    from sklearn.datasets import load_digits  # noqa: PLC0415  (bundled data, no download)
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(images))
    # Test first, as in 1.0.0 (the same 360 images); validation from 1.0.0's train part.
    test, validation, train = np.split(
        order, [DIGITS_TEST_EXAMPLES, DIGITS_TEST_EXAMPLES + DIGITS_VALIDATION_EXAMPLES])
    return {name: self._generate_examples(images, digits.target, np.sort(indices))
            for name, indices in (("train", train), ("validation", validation), ("test", test))}

  def _generate_examples(self, images, labels, indices):
    for i in indices:  # the key is the image's index in scikit-learn's array
      yield int(i), {"image": _png(images[i]), "label": int(labels[i])}


def image_spec(cfg: DataConfig) -> tuple[tuple[int, int, int], int]:
  """((H, W, C), number of classes) from the dataset's TFDS features (nothing prepared)."""
  features = sources.builder(cfg).info.features
  if "image" not in features or "label" not in features:
    raise ValueError(f"{cfg.dataset}: an image dataset needs 'image' and 'label' features; "
                     f"it has {', '.join(features)}")
  return tuple(features["image"].shape), features["label"].num_classes


def _example(cfg: DataConfig, example: dict[str, Any]) -> dict[str, np.ndarray]:
  image = np.asarray(example["image"])
  if image.ndim == 2:
    image = image[..., None]
  return {"images": image.astype(np.float32) * (2.0 / 255.0) - 1.0,
          "targets": np.asarray([example["label"]], np.int32),
          "targets_segment_ids": np.ones(1, np.int32)}


class _Augment(grain.transforms.RandomMap):
  """Random crop of the zero-padded image (`padding` pixels a side) and horizontal flip."""

  def __init__(self, padding: int, flip: bool):
    self.padding, self.flip = padding, flip

  def random_map(self, element, rng: np.random.Generator):
    image = element["images"]
    if self.padding:
      p = self.padding
      padded = np.pad(image, ((p, p), (p, p), (0, 0)), constant_values=-1.0)  # black
      top, left = rng.integers(0, 2 * p + 1, size=2)
      image = padded[top:top + image.shape[0], left:left + image.shape[1]]
    if self.flip and rng.random() < 0.5:
      image = image[:, ::-1]
    return {**element, "images": np.ascontiguousarray(image)}


def train_iterator(cfg: DataConfig, *, batch_size: int, seed: int, process_index: int = 0,
                   process_count: int = 1) -> grain.DatasetIterator:
  """Endless shuffled, augmented training batches for this process (`get_state` resumes)."""
  source = sources.data_source(cfg, cfg.train_split)
  ds = grain.MapDataset.source(source)[process_index::process_count]
  if len(ds) == 0:
    raise ValueError(f"{cfg.dataset}/{cfg.train_split}: no examples for process "
                     f"{process_index} of {process_count} ({len(source)} in all)")
  if cfg.shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(None).map(functools.partial(_example, cfg))
  if cfg.image_crop_padding or cfg.image_flip:
    ds = ds.random_map(_Augment(cfg.image_crop_padding, cfg.image_flip), seed=seed)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads,
                                            prefetch_buffer_size=cfg.read_buffer))
  return iter(ds.batch(batch_size, drop_remainder=True))


def eval_batches(cfg: DataConfig, split: str, *, batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> list[dict[str, np.ndarray]]:
  """Batches covering each of this process's images once, in order; padding rows (zeros)
  have `valid` False and `index` -1, and every process gets the same number of batches."""
  examples = grain.MapDataset.source(sources.data_source(cfg, split)).map(
      functools.partial(_example, cfg))
  if len(examples) == 0:
    raise ValueError(f"{cfg.dataset}: split {split!r} has no examples")
  indices = list(range(len(examples)))[process_index::process_count]
  num_batches = math.ceil(math.ceil(len(examples) / process_count) / batch_size)
  blank = {k: np.zeros_like(v) for k, v in examples[0].items()}
  batches = []
  for b in range(num_batches):
    chunk = indices[b * batch_size:(b + 1) * batch_size]
    rows = [examples[i] for i in chunk] + [blank] * (batch_size - len(chunk))
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    batch["valid"] = np.arange(batch_size) < len(chunk)
    batch["index"] = np.array(chunk + [-1] * (batch_size - len(chunk)), np.int32)
    batches.append(batch)
  return batches
