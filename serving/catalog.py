"""`mmfuse catalog add` / `remove`: new and withdrawn products without retraining.

Both read the newest version in a model base, change its catalogue and write
the result as the next version, which `mmfuse serve` (and TF Serving) then
picks up; the version read from is never changed. An added item is embedded
by the version's own `embed_items` (its Transform graph and item tower,
trainer/export.py), so it lands where training would have put an item with
that content and no interactions; its id is unknown to the towers' id
embeddings, so it enters no one's history vector until the next training.
A removed item leaves every signature's answers: its row is taken out of the
catalogue, the id -> row table, search's BM25 table and the partitioned
index (trainer/index.py), where an added item joins its nearest partition.

A version is written whole before it appears: saved to a staging directory
in the model base (a name TF Serving ignores), copied with its manifest last
by `model_store.push_version` as the Pusher copies, and renamed to its number.
"""
import os
import shutil
import tempfile
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from dataset.contract import DatasetError, Item, attribute_tokens, read_bytes, read_items
from mmfuse.config import ExportSettings
from serving import model_store
from trainer import export, lexical
from trainer import index as catalogue_index

EMBED_BATCH_SIZE = 64
_NEEDED = ("embed_items", "set_item_rows", "item_ids", "candidates")


class CatalogError(ValueError):
    """A catalogue change mmfuse refuses; the message says why (row and field for a file)."""


def newest_version(model_base: str) -> Tuple[int, str]:
    found = model_store.versions(model_base)
    if not found:
        raise CatalogError(f"no model version (<integer>/saved_model.pb) under {model_base}")
    return found[-1], os.path.join(model_base, str(found[-1]))


def load_editable(version_dir: str):
    """The version, checked against its manifest, with what a catalogue edit needs."""
    model_store.check_manifest(version_dir)
    model = tf.saved_model.load(version_dir)
    missing = [name for name in _NEEDED if not hasattr(model, name)]
    if missing:
        raise CatalogError(f"{version_dir} has no {', '.join(missing)}: it was exported before "
                           "catalogue updates; retrain (or re-export) it with this mmfuse")
    return model


def read_new_items(path: str) -> List[Item]:
    """The rows of an items.csv to add, checked as a dataset's items are, plus:
    every image must be usable and a row must have something to embed."""
    try:
        items = read_items(path, check_images=True, max_bad_image_fraction=0)
    except DatasetError as error:
        raise CatalogError(str(error)) from None
    for item in items.values():
        if not (item.title or item.description or item.attributes or item.image_path):
            raise CatalogError(f"{path}: line {item.line}: item {item.item_id!r} has no title, "
                               "description, attribute or image to embed it from")
    return list(items.values())


def refuse_known_ids(path: str, items: Sequence[Item], known_ids: Sequence[str]) -> None:
    """An added id must not be in the catalogue already."""
    known = set(known_ids)
    for item in items:
        if item.item_id in known:
            raise CatalogError(f"{path}: line {item.line}: field item_id: {item.item_id!r} is "
                               "already in the catalogue (remove it first to replace it)")


def embed(model, items: Sequence[Item]) -> Tuple[np.ndarray, np.ndarray, Dict[str, list]]:
    """(vectors [n, dim], word indices [n, length], display fields: `titles`
    and `attributes` shortened as at export) of `items` by the model's `embed_items`."""
    vectors, tokens = [], []
    display: Dict[str, list] = {"titles": [], "attributes": []}
    for start in range(0, len(items), EMBED_BATCH_SIZE):
        batch = items[start:start + EMBED_BATCH_SIZE]
        attributes = [list(attribute_tokens(item)) for item in batch]
        width = max([len(values) for values in attributes] + [1])
        padded = [values + [""] * (width - len(values)) for values in attributes]
        images = [read_bytes(item.image_path) if item.image_path else b"" for item in batch]
        answer = model.embed_items(
            item_id=tf.constant([item.item_id for item in batch]),
            title=tf.constant([item.title for item in batch]),
            description=tf.constant([item.description for item in batch]),
            attributes=tf.constant(padded, tf.string), image=tf.constant(images))
        vectors.append(answer["embeddings"].numpy())
        tokens.append(answer["item_tokens"].numpy())
        for name in display:
            if name in answer:  # exported before answers carried display fields: none
                display[name].extend(answer[name].numpy().tolist())
            else:
                display[name].extend([b""] * len(batch))
    lengths = ExportSettings()  # the lengths are not in the model: the defaults'
    display = {"titles": export.shortened(display["titles"], lengths.title_length),
               "attributes": export.shortened(display["attributes"], lengths.attributes_length)}
    return np.concatenate(vectors), np.concatenate(tokens), display


def _has_lexical(model) -> bool:
    return isinstance(getattr(model, "lexical_entries", None), tf.Variable)


def _set_catalogue(model, item_ids: np.ndarray, candidates: np.ndarray,
                   lexical_table: Tuple[np.ndarray, np.ndarray, np.ndarray] = None,
                   display: Dict[str, np.ndarray] = None) -> None:
    model.candidates.assign(candidates.astype(np.float32))
    model.item_ids.assign(item_ids)
    for output, table in export.DISPLAY_TABLES.items():
        if isinstance(getattr(model, table, None), tf.Variable):
            getattr(model, table).assign(display[output])
    model.set_item_rows(tf.constant(item_ids))
    # Added items join their nearest partition; removed ones leave theirs.
    catalogue_index.refresh_model(model)
    if lexical_table is not None:
        pairs, counts, lengths = lexical_table
        model.lexical_entries.assign(pairs.reshape(-1, 2).astype(np.int64))
        model.lexical_counts.assign(counts.astype(np.float32))
        model.item_lengths.assign(lengths.astype(np.float32))
        model.lexical_weights.assign(lexical.bm25_from_counts(pairs.reshape(-1, 2), counts, lengths))


def _display(model, output: str) -> np.ndarray:
    """The catalogue's display field `output` per row (empty in older exports)."""
    variable = getattr(model, export.DISPLAY_TABLES[output], None)
    if isinstance(variable, tf.Variable):
        return variable.numpy()
    return np.full(len(model.item_ids.numpy()), b"", dtype=object)


def _lexical_table(model):
    if not _has_lexical(model):
        return None
    if not isinstance(getattr(model, "lexical_counts", None), tf.Variable):
        raise CatalogError("this version's search table was exported without its word counts; "
                           "retrain (or re-export) it with this mmfuse")
    return (model.lexical_entries.numpy(), model.lexical_counts.numpy(),
            model.item_lengths.numpy())


def add_items(model_base: str, items_csv: str) -> Dict[str, object]:
    """Adds the items of `items_csv` to the newest version as a new version."""
    version, version_dir = newest_version(model_base)
    # The rows' own checks first: a bad row is refused before the model loads.
    items = read_new_items(items_csv)
    model = load_editable(version_dir)
    item_ids = model.item_ids.numpy()
    refuse_known_ids(items_csv, items, [item.decode() for item in item_ids[1:]])
    vectors, tokens, new_display = embed(model, items)
    table = _lexical_table(model)
    if table is not None:
        pairs, counts, lengths = table
        new_pairs, new_counts, new_lengths = lexical.term_counts(
            np.concatenate([np.zeros_like(tokens[:1]), tokens]))  # row 0: offset by one
        new_pairs[:, 0] += len(item_ids) - 1
        table = (np.concatenate([pairs, new_pairs]), np.concatenate([counts, new_counts]),
                 np.concatenate([lengths, new_lengths[1:]]))
    new_ids = np.concatenate([item_ids, np.array([item.item_id.encode() for item in items], object)])
    display = {output: np.concatenate([_display(model, output), np.array(new_display[output], object)])
               for output in export.DISPLAY_TABLES}
    _set_catalogue(model, new_ids, np.concatenate([model.candidates.numpy(), vectors]), table,
                   display)
    written = write_version(model_base, model)
    return {"version": written, "from_version": version, "added": len(items),
            "catalogue": len(new_ids) - 1}


def remove_items(model_base: str, remove_ids: Sequence[str]) -> Dict[str, object]:
    """Takes the items `remove_ids` out of the newest version, as a new version."""
    version, version_dir = newest_version(model_base)
    model = load_editable(version_dir)
    item_ids = model.item_ids.numpy()
    present = {item.decode() for item in item_ids[1:]}
    unknown = [item for item in remove_ids if item not in present]
    if unknown:
        raise CatalogError(f"not in the catalogue of version {version}: {', '.join(unknown[:5])}"
                           + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    removed = {item.encode() for item in remove_ids}
    keep = np.array([index == 0 or item not in removed for index, item in enumerate(item_ids)])
    if keep.sum() < 2:
        raise CatalogError("that would leave the catalogue empty")
    table = _lexical_table(model)
    if table is not None:
        pairs, counts, lengths = table
        new_row = np.cumsum(keep) - 1  # old row -> new row, for the rows kept
        kept = keep[pairs[:, 0]]
        pairs = np.stack([new_row[pairs[kept, 0]], pairs[kept, 1]], axis=1)
        table = (pairs, counts[kept], lengths[keep])
    display = {output: _display(model, output)[keep] for output in export.DISPLAY_TABLES}
    _set_catalogue(model, item_ids[keep], model.candidates.numpy()[keep], table, display)
    written = write_version(model_base, model)
    return {"version": written, "from_version": version, "removed": len(removed),
            "catalogue": int(keep.sum()) - 1}


def write_version(model_base: str, model) -> int:
    """Saves `model` as the next version of `model_base` (module docstring)."""
    from pipeline.pusher import next_version

    staging = tempfile.mkdtemp(prefix=".catalog-", dir=model_base)
    try:
        saved = os.path.join(staging, "saved")
        tf.saved_model.save(model, saved, signatures=model.signatures)
        version = next_version(model_base)
        pushed = os.path.join(staging, "version")
        model_store.push_version(saved, pushed)
        os.rename(pushed, os.path.join(model_base, str(version)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version
