"""Reads a dataset directory (the contract in schema/README.md) and validates it.

This is the one place that knows the contract: the pipeline's ExampleGen, the
pre-flight check of `mmfuse run` and `mmfuse evaluate` all read data through it,
so they agree on what is an error, what is skipped and what is kept.

Errors name the file, row (as the line number in the file) and field. Nothing
is dropped silently: skipped images are counted in `Dataset.report`.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import datetime
import io
import math
import os
import random
import zlib
from typing import Dict, Iterable, List, Optional, Tuple

import dateutil.parser
from PIL import Image

ITEMS_FILE = "items.csv"
INTERACTIONS_FILE = "interactions.csv"
ITEM_TEXT_COLUMNS = ("title", "description")
ITEM_RESERVED_COLUMNS = ("item_id", "image") + ITEM_TEXT_COLUMNS
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "rating", "query")
IMAGE_FORMATS = ("JPEG", "PNG")
# A few unreadable images are skipped (and reported); more than this share of
# the catalogue's images failing points at a broken dataset, which is an error.
MAX_BAD_IMAGE_FRACTION = 0.05
# How many offending rows an error message lists before it just counts.
ROWS_SHOWN = 5


class DatasetError(ValueError):
    """The dataset directory breaks the contract; the message says where."""


@dataclasses.dataclass(frozen=True)
class Item:
    item_id: str
    title: str = ""
    description: str = ""
    image_path: str = ""  # absolute; empty when the item has no usable image
    attributes: Tuple[Tuple[str, str], ...] = ()
    line: int = dataclasses.field(default=0, compare=False)  # in items.csv, for messages


@dataclasses.dataclass(frozen=True)
class Interaction:
    row: int  # line number in interactions.csv, for messages
    user_id: str
    item_id: str
    timestamp: Optional[int] = None
    rating: Optional[float] = None
    query: str = ""


@dataclasses.dataclass
class Dataset:
    directory: str
    items: Dict[str, Item]  # in file order
    interactions: List[Interaction]
    report: Dict[str, object]

    def summary(self) -> str:
        """One line a person reads before the pipeline starts."""
        parts = [f"{len(self.items)} items", f"{len(self.interactions)} interactions"]
        if not self.interactions:
            parts[-1] += (f" (training on {len(training_interactions(self))} searches made from the "
                          "catalogue: titles and attribute values)")
        for key, value in self.report.items():
            if value:
                parts.append(f"{key}: {value}")
        return f"dataset {self.directory}: " + ", ".join(parts)


def is_uri(path: str) -> bool:
    """gs://, s3:// and the like: read through TensorFlow's file systems."""
    return "://" in path


def read_bytes(path: str) -> bytes:
    if is_uri(path):
        import tensorflow as tf  # only remote datasets pay for importing TensorFlow

        with tf.io.gfile.GFile(path, "rb") as handle:
            return handle.read()
    with open(path, "rb") as handle:
        return handle.read()


def _exists(path: str, directory: bool = False) -> bool:
    if is_uri(path):
        import tensorflow as tf

        return tf.io.gfile.isdir(path) if directory else tf.io.gfile.exists(path)
    return os.path.isdir(path) if directory else os.path.exists(path)


def read_dataset(directory: str, check_images: bool = True) -> Dataset:
    """Reads and validates `directory` (a local path or a URI such as gs://...);
    raises DatasetError naming what is wrong."""
    if not is_uri(directory):
        directory = os.path.abspath(directory)
    if not _exists(directory, directory=True):
        raise DatasetError(f"dataset directory {directory} does not exist")
    report: Dict[str, object] = collections.OrderedDict()
    items = _read_items(directory, check_images, report)
    interactions = _read_interactions(directory, items)
    return Dataset(directory, items, interactions, report)


def _open_csv(path: str, required: Tuple[str, ...]):
    """Yields (line number, row dict) after checking the header."""
    try:
        data = read_bytes(path)
        # utf-8-sig: spreadsheets often save "CSV UTF-8" with a byte-order mark.
        text = data.decode("utf-8-sig")
    except (FileNotFoundError, OSError) as error:
        if not _exists(path):
            raise DatasetError(f"{path}: file not found") from None
        raise DatasetError(f"{path}: {error}") from None
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise DatasetError(f"{path}: line {line}: not UTF-8 ({error.reason} at byte {error.start})"
                           ) from None
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [column for column in required if column not in header]
        if missing:
            raise DatasetError(
                f"{path}: missing required column(s) {', '.join(missing)} "
                f"(header is: {', '.join(header) or 'empty'})")
        try:
            for row in reader:
                yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}
        except csv.Error as error:
            raise DatasetError(f"{path}: line {reader.line_num}: {error}") from None


def _read_items(directory: str, check_images: bool, report) -> Dict[str, Item]:
    return read_items(os.path.join(directory, ITEMS_FILE), check_images, report)


def read_items(path: str, check_images: bool = True, report=None,
               max_bad_image_fraction: float = MAX_BAD_IMAGE_FRACTION) -> Dict[str, Item]:
    """The items of an items.csv at `path` (image paths relative to its
    folder), checked as a dataset's are. With `max_bad_image_fraction` 0 (as
    `mmfuse catalog add` reads) any unusable image is an error naming its row."""
    report = collections.OrderedDict() if report is None else report
    directory = os.path.dirname(path)
    items: Dict[str, Item] = collections.OrderedDict()
    first_seen: Dict[str, int] = {}
    bad_images: List[str] = []
    images_named = 0
    for line, row in _open_csv(path, ("item_id",)):
        item_id = row["item_id"]
        if not item_id:
            raise DatasetError(f"{path}: line {line}: field item_id is empty")
        if item_id in first_seen:
            raise DatasetError(
                f"{path}: line {line}: item_id {item_id!r} repeats line {first_seen[item_id]}")
        first_seen[item_id] = line
        image_path = ""
        if row.get("image"):
            images_named += 1
            image_path = os.path.join(directory, row["image"])
            if not is_uri(image_path):
                image_path = os.path.normpath(image_path)
            problem = _image_problem(image_path) if check_images else None
            if problem and not max_bad_image_fraction:
                raise DatasetError(f"{path}: line {line}: field image ({row['image']}): {problem}")
            if problem:
                bad_images.append(f"line {line} ({row['image']}): {problem}")
                image_path = ""
        attributes = tuple(
            (column, value) for column, value in row.items()
            if column not in ITEM_RESERVED_COLUMNS and value)
        items[item_id] = Item(item_id, row.get("title", ""), row.get("description", ""),
                              image_path, attributes, line)
    if not items:
        raise DatasetError(f"{path}: no items")
    if bad_images and len(bad_images) > max_bad_image_fraction * images_named:
        raise DatasetError(
            f"{path}: {len(bad_images)} of {images_named} images are missing or unreadable, "
            f"more than {max_bad_image_fraction:.0%}: " + "; ".join(bad_images[:ROWS_SHOWN]))
    report["images skipped"] = len(bad_images)
    if bad_images:
        report["images skipped, first"] = "; ".join(bad_images[:ROWS_SHOWN])
    return items


def _image_problem(path: str) -> Optional[str]:
    """Why the image at `path` cannot be used, or None if it decodes."""
    try:
        data = read_bytes(path)
    except Exception as error:  # OSError locally, tf.errors.OpError remotely
        return getattr(error, "strerror", None) or str(error)
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in IMAGE_FORMATS:
                return f"format {image.format} is not JPEG or PNG"
            image.load()
    except Exception as error:  # Pillow raises many types for corrupt files
        return f"does not decode ({error})"
    return None


def _read_interactions(directory: str, items: Dict[str, Item]) -> List[Interaction]:
    path = os.path.join(directory, INTERACTIONS_FILE)
    if not _exists(path):
        return []  # a catalogue-only dataset
    interactions = []
    unknown = []
    for line, row in _open_csv(path, ("user_id", "item_id")):
        item_id = row["item_id"]
        if not item_id:
            raise DatasetError(f"{path}: line {line}: field item_id is empty")
        if not row["user_id"] and not row.get("query"):
            raise DatasetError(
                f"{path}: line {line}: field user_id is empty on a row without a query "
                "(only anonymous search rows may omit the user)")
        if item_id not in items:
            unknown.append(f"line {line} item_id {item_id!r}")
            continue
        interactions.append(Interaction(
            row=line, user_id=row["user_id"], item_id=item_id,
            timestamp=_parse_timestamp(row.get("timestamp", ""), path, line),
            rating=_parse_float(row.get("rating", ""), path, line, "rating"),
            query=row.get("query", "")))
    if unknown:
        raise DatasetError(
            f"{path}: anomaly: {len(unknown)} interaction(s) name items with no row in "
            f"{ITEMS_FILE}: " + ", ".join(unknown[:ROWS_SHOWN])
            + (", ..." if len(unknown) > ROWS_SHOWN else ""))
    return interactions


def _parse_timestamp(text: str, path: str, line: int) -> Optional[int]:
    """Unix seconds or ISO-8601 in any of its forms (naive times are UTC)."""
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = dateutil.parser.isoparse(text)
        except (ValueError, OverflowError):
            raise DatasetError(f"{path}: line {line}: field timestamp {text!r} is neither "
                               "Unix seconds nor ISO-8601") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        seconds = moment.timestamp()
    if not math.isfinite(seconds) or abs(seconds) >= 2**63:
        raise DatasetError(f"{path}: line {line}: field timestamp {text!r} is out of range")
    return int(seconds)


def _parse_float(text: str, path: str, line: int, field: str) -> Optional[float]:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{path}: line {line}: field {field} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DatasetError(f"{path}: line {line}: field {field} {text!r} is not a finite number")
    return value


def training_interactions(dataset: Dataset) -> List[Interaction]:
    """The rows the model learns from: the interactions, or, for a catalogue
    without any, searches made from the catalogue itself: each titled item
    is a search for itself by its title, and each item with attributes by a
    few of their values ("Navy Blue Shirts"), the way shoppers ask. Titles
    alone would teach only long queries: the word a shopper types is often a
    category or a colour that a title spells otherwise or not at all."""
    if dataset.interactions:
        return dataset.interactions
    rows = []
    for item in dataset.items.values():
        for query in (item.title, attribute_query(item)):
            if query:
                rows.append(Interaction(row=0, user_id="", item_id=item.item_id, query=query))
    return rows


def attribute_query(item: Item, most_values: int = 3) -> str:
    """One to `most_values` of the item's attribute values in random order,
    drawn with the item id as the seed, so every run (and `mmfuse evaluate`)
    makes the same queries; "" for an item without attributes."""
    values = sorted({value for _, value in attribute_values(item)})
    if not values:
        return ""
    draw = random.Random(zlib.crc32(item.item_id.encode("utf-8")))
    return " ".join(draw.sample(values, draw.randint(1, min(most_values, len(values)))))


def attribute_values(item: Item) -> Iterable[Tuple[str, str]]:
    """(column, value) pairs; a "|"-separated cell (e.g. genres) gives one per value."""
    for column, cell in item.attributes:
        for value in cell.split("|"):
            if value.strip():
                yield column, value.strip()


def attribute_tokens(item: Item) -> Iterable[str]:
    """"column=value" tokens, one per attribute value."""
    return (f"{column}={value}" for column, value in attribute_values(item))
