"""Converters from the raw public data sets into an mmfuse dataset directory.

A dataset directory is the project's input format:

* ``items.csv``: ``item_id``, ``title``, ``description``, ``image`` (a path
  relative to the dataset directory), then one column per categorical attribute.
  Any of title, description and image may be empty.
* ``interactions.csv`` (absent for a catalogue-only dataset): ``user_id`` (empty
  on an anonymous search row), ``item_id`` and, when the source has them,
  ``timestamp`` (Unix seconds), ``rating`` and ``query``.

``convert(name, src, dst)`` turns one of the public data sets (see
``$MMFUSE_DATA_DIR/README.md``) into such a directory and returns a summary of
what it wrote. Nothing is dropped silently: every source row that is not used
in full is counted, with its reason, under ``summary["skipped"]``.

``write_dataset`` is the one writer of the format; the sample data generator
uses it too.
"""
from __future__ import annotations

import argparse
import calendar
import csv
import datetime
import json
import os
import shutil
from collections import Counter
from typing import Callable, Iterable, Mapping, Sequence

from dataset.contract import INTERACTION_COLUMNS, INTERACTIONS_FILE, ITEM_TEXT_COLUMNS, ITEMS_FILE

IMAGES_DIR = "images"
ITEM_COLUMNS = ("item_id", *ITEM_TEXT_COLUMNS, "image")

Row = Mapping[str, object]


def write_dataset(
    dst: str,
    items: Sequence[Row],
    attributes: Sequence[str],
    interactions: Sequence[Row] | None = None,
    interaction_columns: Sequence[str] = (),
) -> dict:
    """Writes ``items.csv`` (and ``interactions.csv``) into ``dst``.

    Rows are dicts keyed by column name; a missing key is an empty cell. With
    ``interactions=None`` the dataset is catalogue-only, so an
    ``interactions.csv`` left in ``dst`` by an earlier run is removed: the
    directory must describe one dataset. Returns the counts of what was written.
    """
    unknown = [c for c in interaction_columns if c not in INTERACTION_COLUMNS]
    if unknown:
        raise ValueError(f"not interaction columns of the dataset contract: {unknown}")
    os.makedirs(dst, exist_ok=True)
    _write_csv(os.path.join(dst, ITEMS_FILE), (*ITEM_COLUMNS, *attributes), items)
    interactions_path = os.path.join(dst, INTERACTIONS_FILE)
    if interactions is None:
        if os.path.exists(interactions_path):
            os.remove(interactions_path)
        interactions = ()
    else:
        # The contract's column order, whatever order the caller named them in.
        columns = [c for c in INTERACTION_COLUMNS if c in interaction_columns]
        _write_csv(interactions_path, columns, interactions)
    return {
        "items": len(items),
        "images": sum(1 for item in items if item.get("image")),
        "interactions": len(interactions),
        "users": len({row["user_id"] for row in interactions if row.get("user_id")}),
        "search_rows": sum(1 for row in interactions if row.get("query")),
    }


def _write_csv(path: str, columns: Sequence[str], rows: Iterable[Row]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        # extrasaction="raise": a key outside the columns is a converter bug.
        writer = csv.DictWriter(f, fieldnames=list(columns), restval="", extrasaction="raise")
        writer.writeheader()
        writer.writerows(rows)


def _require_file(src: str, name: str) -> str:
    path = os.path.join(src, name)
    if not os.path.isfile(path):
        raise ValueError(f"missing source file {name!r} (looked for {path})")
    return path


def _read_csv(src: str, name: str, required: Sequence[str]) -> list[dict[str, str]]:
    """Reads a headed CSV file of the source, checking its required columns."""
    path = _require_file(src, name)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"source file {name!r} lacks column(s) {missing} ({path})")
        return list(reader)


def _rows_by_id(
    rows: Iterable[dict[str, str]], id_column: str, file: str, skipped: Counter
) -> dict[str, dict[str, str]]:
    """Id -> the first row with that id; counts rows with an empty or repeated id in ``skipped``."""
    by_id: dict[str, dict[str, str]] = {}
    for row in rows:
        row_id = row[id_column].strip()
        if not row_id:
            skipped[f"{file}: empty {id_column}"] += 1
        elif row_id in by_id:
            skipped[f"{file}: duplicate {id_column}"] += 1
        else:
            by_id[row_id] = row
    return by_id


def _copy_images(src_dir: str, dst: str, item_ids: Iterable[str]) -> dict[str, str]:
    """Copies ``<src_dir>/<id>.jpg`` to ``<dst>/images/<id>.jpg`` for each item that has one.

    Returns item id -> image path relative to ``dst``. Copies, never links, so
    that the dataset directory stands alone.
    """
    # One listing instead of a stat per item: the fashion set has 44k images.
    available = set(os.listdir(src_dir)) if os.path.isdir(src_dir) else set()
    os.makedirs(os.path.join(dst, IMAGES_DIR), exist_ok=True)
    copied = {}
    for item_id in item_ids:
        name = f"{item_id}.jpg"
        if name in available:
            shutil.copyfile(os.path.join(src_dir, name), os.path.join(dst, IMAGES_DIR, name))
            copied[item_id] = f"{IMAGES_DIR}/{name}"
    return copied


# MovieLens-100K: the genre flags in the order of u.genre, which is also the
# column order of u.item's last 19 fields; named as in the TMDB-enriched items.csv.
MOVIELENS_GENRE_COLUMNS = (
    "genre_unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "FilmNoir", "Horror", "Musical", "Mystery",
    "Romance", "SciFi", "Thriller", "War", "Western",
)
MOVIELENS_ATTRIBUTES = ("genres", "year", "language")


def _genres(flags: Sequence[str]) -> str:
    """The names of the set genre flags (in MOVIELENS_GENRE_COLUMNS order), joined by "|"."""
    return "|".join("unknown" if column == "genre_unknown" else column
                    for column, flag in zip(MOVIELENS_GENRE_COLUMNS, flags) if flag == "1")


def _movielens_items(src: str, skipped: Counter) -> dict[str, dict[str, str]]:
    """Movies from the enriched items.csv when it is there (plots, languages),
    then every movie only u.item, GroupLens's own file, knows."""
    movies: dict[str, dict[str, str]] = {}
    if os.path.exists(os.path.join(src, "items.csv")):
        _enriched_movies(src, movies, skipped)
    _official_movies(src, movies, skipped)
    return movies


def _enriched_movies(src: str, movies: dict[str, dict[str, str]], skipped: Counter) -> None:
    enriched = _read_csv(
        src, "items.csv",
        ("movie_id", "title", "year", "overview", "original_language", *MOVIELENS_GENRE_COLUMNS),
    )
    # items.csv repeats some movies, each time with an identical row.
    for movie_id, row in _rows_by_id(enriched, "movie_id", "items.csv", skipped).items():
        year = row["year"].strip()
        movies[movie_id] = {
            "item_id": movie_id,
            "title": row["title"].strip(),
            "description": row["overview"].strip(),
            "genres": _genres([row[c].strip() for c in MOVIELENS_GENRE_COLUMNS]),
            # pandas wrote the year as a float ("1995.0").
            "year": year[:-2] if year.endswith(".0") else year,
            "language": row["original_language"].strip(),
        }


def _official_movies(src: str, movies: dict[str, dict[str, str]], skipped: Counter) -> None:
    # u.item: movie id|title|release date|video release date|IMDb URL|19 genre
    # flags, pipe separated and ISO-8859-1 encoded.
    with open(_require_file(src, "u.item"), encoding="latin-1") as f:
        for line in f:
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("|")
            if len(fields) != 5 + len(MOVIELENS_GENRE_COLUMNS) or not fields[0].strip():
                skipped["u.item: malformed line"] += 1
                continue
            movie_id, title, release_date = fields[0].strip(), fields[1].strip(), fields[2]
            if movie_id in movies:
                continue
            year = release_date.strip()[-4:]  # "01-Jan-1995"; empty for a few movies
            movies[movie_id] = {
                "item_id": movie_id,
                # "unknown" is u.item's placeholder for a movie without a title.
                "title": "" if title == "unknown" else title,
                "genres": _genres(fields[5:]),
                "year": year if year.isdigit() else "",
            }


def _movielens_interactions(src: str, movie_ids: Mapping[str, object],
                            skipped: Counter) -> list[dict]:
    interactions = []
    with open(_require_file(src, "u.data"), encoding="latin-1") as f:
        for line in f:
            fields = line.split()
            try:
                user_id, item_id, rating, timestamp = fields
                row = {"user_id": user_id, "item_id": item_id,
                       "timestamp": int(timestamp), "rating": float(rating)}
            except ValueError:
                skipped["u.data: malformed line"] += 1
                continue
            if item_id not in movie_ids:
                skipped["u.data: unknown item_id"] += 1
                continue
            interactions.append(row)
    return interactions


def convert_movielens(src: str, dst: str) -> dict:
    """MovieLens-100K: GroupLens's ``u.data`` ratings as interactions (no
    queries) and ``u.item`` movies (title, genres, year); plots from an
    enriched ``items.csv`` and ``posters/<movie_id>.jpg`` are used when they sit
    beside them (u.user and the other files are not needed)."""
    skipped: Counter = Counter()
    movies = _movielens_items(src, skipped)
    interactions = _movielens_interactions(src, movies, skipped)
    images = _copy_images(os.path.join(src, "posters"), dst, movies)
    items = [{**movie, "image": images.get(movie_id, "")} for movie_id, movie in movies.items()]
    summary = write_dataset(dst, items, MOVIELENS_ATTRIBUTES, interactions,
                            ("user_id", "item_id", "timestamp", "rating"))
    return {**summary, "skipped": dict(skipped)}


FASHION_ATTRIBUTES = ("master_category", "sub_category", "article_type", "colour", "usage")


def convert_fashion(src: str, dst: str, limit: int | None = None) -> dict:
    """Fashion product images (small): a catalogue with titles, images and attributes.

    ``limit`` keeps only the first ``limit`` products of products.csv.
    """
    products = _read_csv(src, "products.csv", ("product_id", "title", *FASHION_ATTRIBUTES))
    if limit is not None:
        products = products[:limit]
    skipped: Counter = Counter()
    items = {
        product_id: {"item_id": product_id, "title": row["title"].strip(),
                     **{a: row[a].strip() for a in FASHION_ATTRIBUTES}}
        for product_id, row in _rows_by_id(products, "product_id", "products.csv", skipped).items()
    }
    images = _copy_images(os.path.join(src, "images"), dst, items)
    rows = [{**item, "image": images.get(product_id, "")} for product_id, item in items.items()]
    summary = write_dataset(dst, rows, FASHION_ATTRIBUTES)
    return {**summary, "skipped": dict(skipped)}


def convert_home_depot(src: str, dst: str) -> dict:
    """Home Depot search relevance: one anonymous search interaction per judgement."""
    judgements = _read_csv(src, "train.csv",
                           ("product_uid", "product_title", "search_term", "relevance"))
    skipped: Counter = Counter()
    titles: dict[str, str] = {}
    interactions = []
    for row in judgements:
        product_uid, query = row["product_uid"].strip(), row["search_term"].strip()
        try:
            relevance: float | None = float(row["relevance"])
        except ValueError:
            relevance = None
        if relevance is None or not 1.0 <= relevance <= 3.0:
            skipped["train.csv: relevance not in 1-3"] += 1
            continue
        if not product_uid:
            skipped["train.csv: empty product_uid"] += 1
            continue
        if not query:
            skipped["train.csv: empty search_term"] += 1
            continue
        title = row["product_title"].strip()
        kept_title = titles.setdefault(product_uid, title)
        if title != kept_title:
            # The row is kept; only its variant of the product's title is not.
            skipped["train.csv: product_title differs from the product's first"] += 1
        interactions.append(
            {"user_id": "", "item_id": product_uid, "rating": relevance, "query": query})
    items = [{"item_id": uid, "title": title} for uid, title in titles.items()]
    summary = write_dataset(dst, items, (), interactions, ("user_id", "item_id", "rating", "query"))
    return {**summary, "skipped": dict(skipped)}


# Online Retail (UCI): StockCodes that are charges, postage or adjustments, not products.
ONLINE_RETAIL_NON_PRODUCTS = frozenset({
    "POST", "DOT", "M", "C2", "D", "CRUK", "BANK CHARGES", "PADS", "AMAZONFEE", "B", "S"})
ONLINE_RETAIL_COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate",
                         "CustomerID")


def _online_retail_time(text: str) -> int | None:
    """Unix seconds of an InvoiceDate, "2010-12-01 08:26:00" (this project's
    copy) or "12/1/2010 8:26" (UCI's own layout), taken as UTC."""
    for layout in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S"):
        try:
            return calendar.timegm(datetime.datetime.strptime(text.strip(), layout).timetuple())
        except ValueError:
            continue
    return None


def convert_online_retail(src: str, dst: str) -> dict:
    """UCI Online Retail: one interaction per (customer, invoice time, StockCode)
    purchase; StockCode is the item, its most frequent Description the title.

    Cancellations (InvoiceNo "C..."), non-product codes, rows without a
    CustomerID and lines that repeat an earlier line's (customer, time, item)
    are counted under "skipped", by reason."""
    lines = _read_csv(src, "online_retail.csv", ONLINE_RETAIL_COLUMNS)
    skipped: Counter = Counter()
    descriptions: dict[str, Counter] = {}
    interactions: dict[tuple, dict] = {}
    for line in lines:
        customer = line["CustomerID"].strip()
        customer = customer[:-2] if customer.endswith(".0") else customer  # UCI's float column
        code = line["StockCode"].strip()
        timestamp = _online_retail_time(line["InvoiceDate"])
        try:
            quantity = float(line["Quantity"])
        except ValueError:
            quantity = None
        if not customer:
            skipped["online_retail.csv: no CustomerID"] += 1
        elif line["InvoiceNo"].strip().upper().startswith("C"):
            skipped["online_retail.csv: cancellation"] += 1
        elif code.upper() in ONLINE_RETAIL_NON_PRODUCTS:
            skipped["online_retail.csv: non-product StockCode"] += 1
        elif not code:
            skipped["online_retail.csv: empty StockCode"] += 1
        elif quantity is None or quantity <= 0:
            skipped["online_retail.csv: Quantity not positive"] += 1
        elif timestamp is None:
            skipped["online_retail.csv: unreadable InvoiceDate"] += 1
        elif (customer, timestamp, code) in interactions:
            skipped["online_retail.csv: same customer, InvoiceDate and StockCode as an earlier line"] += 1
        else:
            interactions[(customer, timestamp, code)] = {
                "user_id": customer, "item_id": code, "timestamp": timestamp}
            description = line["Description"].strip()
            if description:
                descriptions.setdefault(code, Counter())[description] += 1
            else:
                descriptions.setdefault(code, Counter())
    # Counter.most_common keeps first-seen order among ties.
    items = [{"item_id": code, "title": names.most_common(1)[0][0] if names else ""}
             for code, names in descriptions.items()]
    summary = write_dataset(dst, items, (), list(interactions.values()),
                            ("user_id", "item_id", "timestamp"))
    return {**summary, "source_rows": len(lines), "skipped": dict(skipped)}


CONVERTERS: dict[str, Callable[..., dict]] = {
    "movielens-100k": convert_movielens,
    "fashion-small": convert_fashion,
    "home-depot": convert_home_depot,
    "online-retail": convert_online_retail,
}


def convert(name: str, src: str, dst: str, limit: int | None = None) -> dict:
    """Converts the public data set ``name`` found in ``src`` into the dataset directory ``dst``.

    ``name`` is one of ``CONVERTERS``; ``limit`` (first N products) applies to
    ``fashion-small`` only. Returns the summary: counts of items, images,
    interactions, users and search rows (with a query), and ``skipped`` (reason -> row count).
    """
    if name not in CONVERTERS:
        raise ValueError(f"unknown data set {name!r}; expected one of {sorted(CONVERTERS)}")
    if not os.path.isdir(src):
        raise ValueError(f"source directory {src} does not exist")
    if limit is not None:
        if name != "fashion-small":
            raise ValueError(f"limit applies to fashion-small only, not {name!r}")
        return convert_fashion(src, dst, limit=limit)
    return CONVERTERS[name](src, dst)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(CONVERTERS))
    parser.add_argument("src", help="the raw data set's folder")
    parser.add_argument("dst", help="the dataset directory to write")
    parser.add_argument("--limit", type=int, help="fashion-small only: first N products")
    args = parser.parse_args(argv)
    summary = convert(args.name, args.src, args.dst, limit=args.limit)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
