"""The Vision Transformer on the project's encoder stack: patches, positions, presets, data,
training through the one loop, and bad input."""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.configs import vit_digits
from transformer import attention_maps, commands, settings, train
from transformer.data import DataConfig, eval_batches, images, train_iterator
from transformer.config import TransformerConfig
from transformer.vit import (VIT_PRESETS, VisionConfig, VisionTransformer, count_parameters,
                             patchify, sinusoidal_2d, unpatchify, vit_preset)

GOLDEN_COUNTS = {"ViT-Ti/16": 5_717_416, "ViT-S/16": 22_050_664, "ViT-B/16": 86_567_656}


def tiny(**overrides):
  values = dict(vocab_size=1, d_model=16, num_heads=2, d_ff=32, num_encoder_layers=2,
                norm_position="pre", activation="gelu", attention_bias=True,
                positional_encoding="learned", dropout_rate=0.0)
  return TransformerConfig(**{**values, **overrides})


VISION = VisionConfig(image_size=8, patch_size=2, num_channels=1, num_classes=10)


def random_images(n=3, shape=(8, 8, 1), seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (n, *shape)), jnp.float32)


def init(model, images_):
  return model.init(jax.random.key(0), images_)["params"]


def permute_patches(images_, perm, patch):
  return unpatchify(patchify(images_, patch)[:, perm], patch, images_.shape[-1])


@pytest.mark.parametrize("patch", [1, 2, 4])
def test_patchify_unpatchify_round_trip_and_patch_order(patch):
  x = random_images(2, (8, 8, 3))
  patches = patchify(x, patch)
  grid = 8 // patch
  assert patches.shape == (2, grid * grid, patch * patch * 3)
  np.testing.assert_array_equal(unpatchify(patches, patch, 3), x)
  r, c = grid - 1, 0  # patch n = r * G + c holds pixels [rP:(r+1)P, cP:(c+1)P], row-major
  np.testing.assert_array_equal(patches[:, r * grid + c],
                                x[:, r * patch:(r + 1) * patch, :patch].reshape(2, -1))


def test_the_patch_embedding_is_the_strided_convolution():
  model = VisionTransformer(tiny(), VISION)
  x = random_images()
  params = init(model, x)["patch_embedding"]
  dense = patchify(x, 2) @ params["kernel"] + params["bias"][None, None]
  kernel_HWIO = params["kernel"].reshape(2, 2, 1, 16)
  conv = jax.lax.conv_general_dilated(x, kernel_HWIO, (2, 2), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(dense, conv.reshape(3, 16, 16) + params["bias"][None, None], rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("kind,scale,norm,pooling", [
    ("dot_product", "inv_sqrt_dk", "pre", "cls"), ("dot_product", "qk_norm", "post", "cls"),
    ("additive", "inv_sqrt_dk", "pre", "gap")])
def test_without_positions_a_permutation_of_patches_leaves_the_output(kind, scale, norm, pooling):
  cfg = tiny(positional_encoding="none", attention_kind=kind, attention_scale=scale,
             norm_position=norm)
  model = VisionTransformer(cfg, VISION.replace(pooling=pooling))
  x = random_images()
  params = init(model, x)
  perm = np.random.default_rng(1).permutation(16)
  np.testing.assert_allclose(model.apply({"params": params}, permute_patches(x, perm, 2)),
                             model.apply({"params": params}, x), rtol=1e-5, atol=1e-5)


def test_a_permutation_of_patches_changes_the_output_only_through_the_positions():
  model = VisionTransformer(tiny(), VISION)
  x = random_images()
  params = init(model, x)
  table = np.random.default_rng(2).normal(size=params["position_embedding"].shape)
  params = {**params, "position_embedding": jnp.asarray(table, jnp.float32)}  # unit scale
  perm = np.random.default_rng(1).permutation(16)
  moved = permute_patches(x, perm, 2)
  logits = model.apply({"params": params}, x)
  assert np.max(np.abs(model.apply({"params": params}, moved) - logits)) > 1e-2
  # Each patch carries its position embedding along: the same output.
  table_moved = np.concatenate([table[:1], table[1:][perm]])
  moved_params = {**params, "position_embedding": jnp.asarray(table_moved, jnp.float32)}
  np.testing.assert_allclose(model.apply({"params": moved_params}, moved), logits, rtol=1e-5,
                             atol=1e-5)


def test_sinusoidal_2d_positions_encode_row_and_column():
  pos = np.asarray(sinusoidal_2d(4, 16))
  assert pos.shape == (16, 16)
  np.testing.assert_array_equal(pos[4 * 2 + 1, :8], pos[4 * 2 + 3, :8])  # same row
  np.testing.assert_array_equal(pos[4 * 1 + 3, 8:], pos[4 * 2 + 3, 8:])  # same column
  assert len({tuple(p) for p in pos.round(6)}) == 16
  model = VisionTransformer(tiny(positional_encoding="sinusoidal"), VISION)
  x = random_images()
  params = init(model, x)
  assert "position_embedding" not in params
  moved = permute_patches(x, np.random.default_rng(1).permutation(16), 2)
  assert np.max(np.abs(model.apply({"params": params}, moved)
                       - model.apply({"params": params}, x))) > 1e-4


def test_golden_parameter_counts_of_every_preset():
  assert set(GOLDEN_COUNTS) == set(VIT_PRESETS)
  for name, count in GOLDEN_COUNTS.items():
    model_cfg, vision = vit_preset(name)
    assert (vision.image_size, vision.num_classes, vision.pooling) == (224, 1000, "cls")
    assert count_parameters(model_cfg, vision) == count, name


def test_bad_inputs_get_one_line_errors():
  with pytest.raises(ValueError, match=r"^invalid VisionConfig: image_size=30 is not divisible "
                     r"by patch_size=4$"):
    VisionConfig(image_size=30, patch_size=4)
  with pytest.raises(ValueError, match=r"pooling='max' is not one of cls, gap"):
    VisionConfig(pooling="max")
  model = VisionTransformer(tiny(), VISION)
  with pytest.raises(ValueError) as e:
    model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 3)))
  # (JAX appends a line about its traceback filtering to errors raised under tracing.)
  assert str(e.value).splitlines()[0] == ("images of shape (2, 8, 8, 3): the ViT takes "
                                          "[batch, 8, 8, 1] (image_size=8, num_channels=1)")
  with pytest.raises(ValueError, match=r"^unknown ViT preset 'ViT-H/14'; valid: ViT-Ti/16, "):
    vit_preset("ViT-H/14")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def digits_config(data_dir, **changes):
  config = vit_digits.get_config()
  config.data.data_dir = data_dir
  for key, value in changes.items():
    section, _, leaf = key.rpartition(".")
    (config[section] if section else config)[leaf] = value
  return config


def test_digits_builder_fixed_split_and_the_image_pipeline(data_dir):
  cfg = DataConfig(dataset="sklearn_digits", data_dir=data_dir, image_crop_padding=1)
  assert images.image_spec(cfg) == ((8, 8, 1), 10)
  batches = eval_batches(cfg, None, "test", batch_size=64)
  assert len(batches) == 6 and sum(int(b["valid"].sum()) for b in batches) == 360
  first = batches[0]
  assert first["images"].shape == (64, 8, 8, 1) and first["images"].dtype == np.float32
  assert first["images"].min() == -1.0 and first["images"].max() == 1.0
  np.testing.assert_array_equal(first["targets_segment_ids"], 1)
  from sklearn.datasets import load_digits  # the split's images are scikit-learn's
  digits = load_digits()
  i = int(first["index"][0])
  src = tfds.data_source("sklearn_digits", split="test", data_dir=data_dir)
  match = np.flatnonzero((np.round(digits.images * 255 / 16) == src[i]["image"][..., 0])
                         .all(axis=(1, 2)) & (digits.target == src[i]["label"]))
  assert match.size >= 1 and first["targets"][0, 0] == src[i]["label"]
  it = train_iterator(cfg, None, batch_size=8, seed=0)
  a = next(it)
  state = it.get_state()
  b = next(it)
  it.set_state(state)
  np.testing.assert_array_equal(next(it)["images"], b["images"])  # resumes exactly
  assert a["images"].shape == (8, 8, 8, 1) and a["targets"].shape == (8, 1)


# sha256 over the test split's (image bytes, label) in order, written by sklearn_digits 1.0.0
# (train 1,437 / test 360): 2.0.0 carved validation out of train and left test as it was.
DIGITS_TEST_SHA256 = "d26ec4558c82cab0c5182f24ebbf58974b126bb09aee5b6225e37338e2e11d8c"


def test_digits_splits_are_fixed_disjoint_and_test_is_unchanged_from_1_0_0(data_dir):
  from sklearn.datasets import load_digits  # noqa: PLC0415
  digits = load_digits()
  def content(image_HW):
    return hashlib.sha256(np.asarray(image_HW, np.uint8).tobytes()).hexdigest()

  every = {content(np.round(x * 255 / 16)) for x in digits.images}
  assert len(every) == 1797  # no two scikit-learn images alike: a content hash names one
  splits = {}
  for split, size in (("train", 1257), ("validation", 180), ("test", 360)):
    src = tfds.data_source("sklearn_digits", split=split, data_dir=data_dir)
    assert len(src) == size, split
    examples = [src[i] for i in range(len(src))]
    splits[split] = {content(e["image"][..., 0]) for e in examples}
    assert len(splits[split]) == size, split
    if split == "test":
      h = hashlib.sha256()
      for e in examples:
        h.update(np.asarray(e["image"]).tobytes())
        h.update(bytes([int(e["label"])]))
      assert h.hexdigest() == DIGITS_TEST_SHA256
  assert not splits["train"] & splits["validation"]
  assert not (splits["train"] | splits["validation"]) & splits["test"]
  assert splits["train"] | splits["validation"] | splits["test"] == every
  assert tfds.builder("sklearn_digits", data_dir=data_dir).version == "2.0.0"


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_catalog_images_through_mock_data(tmp_path, name, shape):
  # The calls a real download makes (tfds.data_source), TFDS's mock supplying the examples.
  cfg = DataConfig(dataset=name, data_dir=str(tmp_path), image_flip=True, image_crop_padding=4)
  with tfds.testing.mock_data(num_examples=6):
    assert images.image_spec(cfg) == (shape, 10)
    batch = next(train_iterator(cfg, None, batch_size=4, seed=0))
    test = eval_batches(cfg, None, "test", batch_size=4)
  assert batch["images"].shape == (4, *shape) and batch["targets"].shape == (4, 1)
  assert -1.0 <= batch["images"].min() and batch["images"].max() <= 1.0
  assert len(test) == 2 and int(sum(b["valid"].sum() for b in test)) == 6


@pytest.mark.parametrize("changes,message", [
    ({"vision.patch_size": 3}, r"image_size=8 is not divisible by patch_size=3 \(data\.dataset="
                               r"'sklearn_digits'\)"),
    ({"vision.num_channels": 3}, r"vision\.num_channels=3 but data\.dataset='sklearn_digits' has "
                                 r"1; set vision\.num_channels=0 to take the dataset's"),
    ({"data.dataset": "synthetic_seq2seq/copy"}, r"config\.vision is set, but data\.dataset="
                                                 r"'synthetic_seq2seq/copy' is not an image"),
    ({"vision.pooling": "max"}, r"pooling='max' is not one of cls, gap"),
    ({"model.num_encoder_layers": 0}, r"a ViT needs an encoder"),
])
def test_bad_image_configs_are_one_line_config_errors(data_dir, tmp_path, changes, message):
  from transformer import run as run_lib
  with pytest.raises(settings.ConfigError, match=message) as e:
    run_lib.create(digits_config(data_dir, **changes), str(tmp_path / "wd"))
  assert "\n" not in str(e.value) and not os.path.exists(tmp_path / "wd")


def test_an_image_dataset_needs_a_vision_config(data_dir):
  config = digits_config(data_dir)
  del config["vision"]
  with pytest.raises(settings.ConfigError, match=r"data\.dataset='sklearn_digits' holds images, "
                     r"so config\.vision .* must be set"):
    settings.resolve(config)


def test_a_tiny_vit_learns_the_digits_through_the_loop_and_the_tools(data_dir, tmp_path):
  config = digits_config(
      data_dir, num_train_steps=150, eval_every_steps=150, checkpoint_every_steps=150,
      log_every_steps=50, **{"model.d_model": 32, "model.d_ff": 64, "model.num_encoder_layers": 2,
                             "model.dropout_rate": 0.0, "optim.warmup_steps": 20,
                             "optim.learning_rate": 3e-3, "vision.patch_size": 4})
  workdir = str(tmp_path / "wd")
  result = train.train_and_evaluate(config, workdir)
  assert result["test"]["accuracy"] > 0.6  # chance is 0.1
  assert result["test"]["tokens"] == 360  # every test image, once
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  attention = [r for r in records if r["split"] == "attention"]
  assert [r["step"] for r in attention] == [0, 150]
  assert {"attn/encoder_1/self_attention/entropy_mean/h3",
          "attn/encoder_0/self_attention/grad_norm_logits/h0"} <= set(attention[0])
  # The evaluate tool reads the run back: the same top-1 accuracy as the loop's test split.
  out = commands.evaluate(workdir, split="test")
  assert out["top1_accuracy"] == pytest.approx(result["test"]["accuracy"], abs=1e-9)
  # The probe holds the image, the picture draws the [CLS] attention over its 2 x 2 patches.
  with np.load(os.path.join(workdir, attention_maps.PROBE_FILE)) as probe:
    assert probe["image/pixels"].shape == (8, 8, 1)
    assert probe["encoder_1/self_attention"].shape == (4, 5, 5)  # heads, [CLS] + 4 patches
    assert probe["tokens/source"].tolist() == ["cls", "0,0", "0,1", "1,0", "1,1"]
  path = attention_maps.plot_probe_maps([{"name": "attention_scale=inv_sqrt_dk",
                                          "run_dir": workdir}], str(tmp_path))
  assert path and os.path.getsize(path) > 0


def test_patch_attention_is_the_cls_row_or_the_mean_received():
  w = np.random.default_rng(0).dirichlet(np.ones(5), size=(2, 5))  # [H, T, S], L = 1 + 4
  np.testing.assert_array_equal(attention_maps.patch_attention(w, 2), w[:, 0, 1:].reshape(2, 2, 2))
  g = np.random.default_rng(0).dirichlet(np.ones(4), size=(2, 4))
  np.testing.assert_allclose(attention_maps.patch_attention(g, 2), g.mean(1).reshape(2, 2, 2))


def test_the_scale_grid_over_the_vit_config_resolves_every_point(data_dir):
  from transformer import sweep_grid
  points = sweep_grid.plan(digits_config(data_dir), [
      "model.attention_kind+model.attention_scale=dot_product/inv_sqrt_dk,dot_product/none,"
      "dot_product/inv_dk,dot_product/learned,dot_product/qk_norm,additive/inv_sqrt_dk",
      "model.norm_position=pre,post"], [0])
  assert len(points) == 12
  assert {p.config["vision"]["patch_size"] for p in points} == {2}


def test_the_scanned_stack_and_the_fused_attention_give_the_same_logits():
  from transformer.params import stack_layers
  model = VisionTransformer(tiny(), VISION)
  x = random_images()
  params = init(model, x)
  logits = model.apply({"params": params}, x)
  scanned = VisionTransformer(tiny(scan_layers=True, remat=True), VISION)
  np.testing.assert_allclose(scanned.apply({"params": stack_layers(params, scanned.config)}, x),
                             logits, rtol=1e-5, atol=1e-5)
  fused = VisionTransformer(tiny(attention_implementation="xla"), VISION)
  np.testing.assert_allclose(fused.apply({"params": params}, x), logits, rtol=1e-5, atol=1e-5)


def test_augmentation_is_a_crop_of_the_padded_image_and_a_horizontal_flip():
  image = (np.arange(16, dtype=np.float32).reshape(4, 4, 1) + 1) / 17
  padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), constant_values=-1.0)
  crop = images._Augment(padding=1, flip=False)
  shifts = set()
  for seed in range(30):
    out = crop.random_map({"images": image}, np.random.default_rng(seed))["images"]
    found = [(t, l) for t in range(3) for l in range(3)
             if np.array_equal(out, padded[t:t + 4, l:l + 4])]
    assert found, seed
    shifts.add(found[0])
  assert len(shifts) > 3
  flip = images._Augment(padding=0, flip=True)
  outs = [flip.random_map({"images": image}, np.random.default_rng(s))["images"] for s in range(30)]
  assert all(np.array_equal(o, image) or np.array_equal(o, image[:, ::-1]) for o in outs)
  assert any(np.array_equal(o, image[:, ::-1]) for o in outs) and any(
      np.array_equal(o, image) for o in outs)
