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
import posixpath
import random
import re
import stat
import zlib
from typing import Dict, Iterable, List, Optional, Tuple

import dateutil.parser
from PIL import Image

from mmfuse.config import Config, PipelineSettings

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
# The pipeline settings that bound what reading a dataset may cost.
LIMITS = ("max_image_bytes", "max_image_pixels", "max_text_chars")
# Ratings become float32 features; timestamps outside these years are a unit
# mix-up (milliseconds) or a placeholder, not a time of interaction.
FLOAT32_MAX = 3.4028234663852886e38
YEARS = (1900, 2200)
_TIMESTAMP_RANGE = tuple(
    datetime.datetime(year, 1, 1, tzinfo=datetime.timezone.utc).timestamp() for year in YEARS)


class DatasetError(ValueError):
    """The dataset directory breaks the contract; the message says where."""


class NotARegularFile(OSError):
    """A FIFO, device, directory or socket where a file was expected."""


class TooLarge(OSError):
    """A file larger than the cap it is read with."""


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


def read_bytes(path: str, max_bytes: Optional[int] = None) -> bytes:
    """The file's bytes; raises NotARegularFile for anything but a regular file
    (never opening a FIFO or device) and TooLarge beyond `max_bytes`."""
    if is_uri(path):
        import tensorflow as tf  # only remote datasets pay for importing TensorFlow

        size = tf.io.gfile.stat(path).length
        if max_bytes is not None and size > max_bytes:
            raise TooLarge(f"{size} bytes, more than {max_bytes}")
        with tf.io.gfile.GFile(path, "rb") as handle:
            return handle.read()
    info = os.stat(path)
    _check_regular(info.st_mode, max_bytes, info.st_size)
    # O_NONBLOCK: should a FIFO replace the file after the stat, open() does not hang.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        _check_regular(info.st_mode, max_bytes, info.st_size)
        data = handle.read(-1 if max_bytes is None else max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:  # grew since the stat
        raise TooLarge(f"more than {max_bytes}")
    return data


def _check_regular(mode: int, max_bytes: Optional[int], size: int) -> None:
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a file")
        raise NotARegularFile(f"is {kind}, not a regular file")
    if max_bytes is not None and size > max_bytes:
        raise TooLarge(f"{size} bytes, more than {max_bytes}")


def inside(directory: str, relative: str) -> str:
    """The path of `relative` within `directory`; raises ValueError if it is
    absolute or leads (by `..` or a symlink) out of `directory`."""
    if (os.path.isabs(relative) or relative.startswith(("/", "\\")) or is_uri(relative)
            or (len(relative) > 1 and relative[1] == ":")):
        raise ValueError("is an absolute path; paths are relative to the dataset directory")
    if "\0" in relative:
        raise ValueError("holds a NUL character")
    if is_uri(directory):
        normal = posixpath.normpath(relative)
        if normal == ".." or normal.startswith("../"):
            raise ValueError("leads out of the dataset directory")
        return directory.rstrip("/") + "/" + normal
    root = os.path.realpath(directory)
    real = os.path.realpath(os.path.join(root, relative))
    if os.path.commonpath([root, real]) != root:
        raise ValueError(f"leads out of the dataset directory (to {real})")
    return real


def _exists(path: str, directory: bool = False) -> bool:
    if is_uri(path):
        import tensorflow as tf

        return tf.io.gfile.isdir(path) if directory else tf.io.gfile.exists(path)
    return os.path.isdir(path) if directory else os.path.exists(path)


def limits_of(settings: PipelineSettings) -> Dict[str, int]:
    """The settings that bound reading a dataset (`LIMITS`), as a plain dict."""
    return {name: getattr(settings, name) for name in LIMITS}


def read_dataset(directory: str, check_images: bool = True,
                 limits: Optional[PipelineSettings] = None) -> Dataset:
    """Reads and validates `directory` (a local path or a URI such as gs://...);
    raises DatasetError naming what is wrong. `limits` (default: the defaults)
    caps image and text sizes."""
    limits = limits or PipelineSettings()
    if not is_uri(directory):
        directory = os.path.abspath(directory)
    if not _exists(directory, directory=True):
        raise DatasetError(f"dataset directory {directory} does not exist")
    report: Dict[str, object] = collections.OrderedDict()
    items = _read_items(directory, check_images, report, limits)
    interactions = _read_interactions(directory, items, limits)
    return Dataset(directory, items, interactions, report)


def validate_for_run(directory: str, config: Config) -> Dataset:
    """`read_dataset` under the run's limits, plus what training needs: the
    check `mmfuse run` makes before it imports TFX."""
    dataset = read_dataset(directory, limits=config.pipeline)
    minimum = config.pipeline.min_items
    if len(dataset.items) < minimum:
        raise DatasetError(
            f"{os.path.join(dataset.directory, ITEMS_FILE)}: {len(dataset.items)} item(s); "
            f"training needs at least {minimum} (pipeline.min_items): retrieval over so few "
            "items measures nothing")
    if config.trainer.rating_weight > 0 and all(row.rating is None for row in dataset.interactions):
        raise DatasetError(f"trainer.rating_weight needs interactions with a rating, and "
                           f"{dataset.directory} has none")
    return dataset


def _open_csv(directory: str, name: str, required: Tuple[str, ...],
              limits: PipelineSettings) -> List[Tuple[int, Dict[str, str]]]:
    """(line number, row dict) of every row after checking the header; a
    malformed file (stray quote, wrong number of fields, repeated column,
    over-long cell) is an error naming the line."""
    path = os.path.join(directory, name)
    try:
        data = read_bytes(inside(directory, name))
        # utf-8-sig: spreadsheets often save "CSV UTF-8" with a byte-order mark.
        text = data.decode("utf-8-sig")
    except ValueError as error:  # before UnicodeDecodeError, its subclass
        if not isinstance(error, UnicodeDecodeError):
            raise DatasetError(f"{path} {error}") from None
        line = data[:error.start].count(b"\n") + 1
        raise DatasetError(f"{path}: line {line}: not UTF-8 ({error.reason} at byte {error.start})"
                           ) from None
    except (FileNotFoundError, OSError) as error:
        if not _exists(path):
            raise DatasetError(f"{path}: file not found") from None
        raise DatasetError(f"{path}: {error}") from None
    previous_limit = csv.field_size_limit()
    # Cells are capped by max_text_chars below, with a message naming the field.
    csv.field_size_limit(max(previous_limit, len(text) + 1))
    try:
        return _parse_csv(path, text, required, limits.max_text_chars)
    finally:
        csv.field_size_limit(previous_limit)


def _parse_csv(path: str, text: str, required: Tuple[str, ...], max_chars: int):
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, [])
    except csv.Error as error:
        raise DatasetError(f"{path}: line 1 (header): {error}") from None
    missing = [column for column in required if column not in header]
    if missing:
        raise DatasetError(
            f"{path}: missing required column(s) {', '.join(missing)} "
            f"(header is: {', '.join(header) or 'empty'})")
    for position, column in enumerate(header, start=1):
        if not column.strip():
            raise DatasetError(f"{path}: line 1 (header): column {position} has no name")
        if header.index(column) != position - 1:
            raise DatasetError(f"{path}: line 1 (header): column {column!r} appears twice "
                               f"(columns {header.index(column) + 1} and {position})")
    rows = []
    start = reader.line_num + 1
    while True:
        try:
            fields = next(reader, None)
        except csv.Error as error:
            hint = ""
            if "unexpected end of data" in str(error):
                hint = " (a stray \" opened a quoted field that never closes)"
            elif '"' in str(error):
                hint = f" (at line {reader.line_num}; a stray \" in the record starting here?)"
            raise DatasetError(f"{path}: line {start}: {error}{hint}") from None
        if fields is None:
            return rows
        line, start = start, reader.line_num + 1
        if not fields:
            continue  # a blank line
        if len(fields) != len(header):
            raise DatasetError(
                f"{path}: line {line}: {len(fields)} field(s), but the header has {len(header)}"
                + (f" (the record runs to line {reader.line_num}: a stray \"?)"
                   if reader.line_num > line else ""))
        for column, value in zip(header, fields):
            if len(value) > max_chars:
                raise DatasetError(
                    f"{path}: line {line}: field {column} is {len(value)} characters long, more "
                    f"than pipeline.max_text_chars ({max_chars})")
            if "\n" in value and len(header) >= 3 and any(
                    part.count(",") >= len(header) - 1 for part in value.splitlines()[1:]):
                raise DatasetError(
                    f"{path}: line {line}: field {column} is a quoted cell running to line "
                    f"{reader.line_num} that holds what look like whole rows (a stray \"?)")
        rows.append((line, {column: value.strip() for column, value in zip(header, fields)}))


def _read_items(directory: str, check_images: bool, report,
                limits: PipelineSettings) -> Dict[str, Item]:
    return read_items(os.path.join(directory, ITEMS_FILE), check_images, report, limits=limits)


def read_items(path: str, check_images: bool = True, report=None,
               max_bad_image_fraction: float = MAX_BAD_IMAGE_FRACTION,
               limits: Optional[PipelineSettings] = None) -> Dict[str, Item]:
    """The items of an items.csv at `path` (image paths relative to its
    folder, which they must not leave), checked as a dataset's are, under
    `limits` (default: the default settings'). With `max_bad_image_fraction`
    0 (as `mmfuse catalog add` reads) any unusable image is an error naming its row."""
    report = collections.OrderedDict() if report is None else report
    limits = PipelineSettings() if limits is None else limits
    directory = os.path.dirname(os.path.abspath(path))
    items: Dict[str, Item] = collections.OrderedDict()
    first_seen: Dict[str, int] = {}
    bad_images: List[str] = []
    images_named = 0
    for line, row in _open_csv(directory, os.path.basename(path), ("item_id",), limits):
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
            where = f"{path}: line {line}: field image {row['image']!r}"
            try:
                image_path = inside(directory, row["image"])
            except ValueError as error:
                raise DatasetError(f"{where} {error}") from None
            try:
                problem = _image_problem(image_path, limits) if check_images else None
            except NotARegularFile as error:
                raise DatasetError(f"{where} {error}") from None
            if problem and not max_bad_image_fraction:
                raise DatasetError(f"{where}: {problem}")
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


def _image_problem(path: str, limits: PipelineSettings) -> Optional[str]:
    """Why the image at `path` cannot be used, or None if it decodes; raises
    NotARegularFile (an error, not a skip) for a FIFO, device or directory."""
    try:
        data = read_bytes(path, limits.max_image_bytes)
    except NotARegularFile:
        raise
    except TooLarge as error:
        return f"{error} bytes (pipeline.max_image_bytes)"
    except Exception as error:  # OSError locally, tf.errors.OpError remotely
        return getattr(error, "strerror", None) or str(error)
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            if image.format not in IMAGE_FORMATS:
                return f"format {image.format} is not JPEG or PNG"
            width, height = image.size
            if width * height > limits.max_image_pixels:
                return (f"{width}x{height} pixels, more than {limits.max_image_pixels} "
                        "(pipeline.max_image_pixels)")
            image.load()
    except Image.DecompressionBombError as error:  # Pillow's own, larger cap
        declared = re.search(r"\((\d+) pixels\)", str(error))
        return (f"{declared.group(1) if declared else 'too many'} pixels, more than "
                f"{limits.max_image_pixels} (pipeline.max_image_pixels)")
    except Exception as error:  # Pillow raises many types for corrupt files
        return f"does not decode ({error})"
    return None


def _read_interactions(directory: str, items: Dict[str, Item],
                       limits: PipelineSettings) -> List[Interaction]:
    path = os.path.join(directory, INTERACTIONS_FILE)
    if not _exists(path) and not os.path.islink(path):
        return []  # a catalogue-only dataset
    interactions = []
    unknown = []
    rows = _open_csv(directory, INTERACTIONS_FILE, ("user_id", "item_id"), limits)
    if not rows:
        raise DatasetError(f"{path}: no interactions below the header (remove the file for a "
                           "catalogue-only dataset)")
    for line, row in rows:
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
    low, high = _TIMESTAMP_RANGE
    if not low <= seconds < high:  # also refuses nan
        hint = (" (milliseconds? the contract takes seconds)"
                if seconds >= high and low <= seconds / 1000 < high else "")
        raise DatasetError(f"{path}: line {line}: field timestamp {text!r} is out of range: not "
                           f"in the years {YEARS[0]} to {YEARS[1]}{hint}")
    return int(seconds)


def _parse_float(text: str, path: str, line: int, field: str) -> Optional[float]:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{path}: line {line}: field {field} {text!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:  # the feature is a float32
        raise DatasetError(f"{path}: line {line}: field {field} {text!r} is not a finite number "
                           "(as a 32-bit float)")
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
