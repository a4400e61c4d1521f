"""Tests of the public data set converters.

The unit tests build tiny source folders in tmp_path. The ``real_data`` tests
convert the real data sets under ``$MMFUSE_DATA_DIR`` and are skipped without it.
"""
import csv
import os
import re

import pytest
from PIL import Image

from dataset import converters
from dataset.contract import read_dataset


def read_rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path, header, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_jpeg(path, colour="red"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 12), colour).save(path, format="JPEG")


def make_movielens(src):
    """Movie 1 in items.csv (twice, as the real file repeats some movies) with a
    poster; movie 2 only in u.item; u.data with a malformed line and an unknown movie."""
    os.makedirs(src)
    genres = converters.MOVIELENS_GENRE_COLUMNS
    flags = ["1" if genre in ("Action", "Comedy") else "0" for genre in genres]
    header = ["movie_id", "title", *genres, "year", "overview", "original_language", "runtime"]
    movie = ["1", "Toy Story (1995)", *flags, "1995.0", "Toys, alive.", "en", "81.0"]
    write_rows(os.path.join(src, "items.csv"), header, [movie, movie])
    drama = "|".join("1" if genre == "Drama" else "0" for genre in genres)
    with open(os.path.join(src, "u.item"), "w", encoding="latin-1") as f:
        f.write(f"1|Toy Story (1995)|01-Jan-1995||http://x|{'|'.join(flags)}\n")
        f.write(f"2|Café (1996)|01-Jan-1996||http://y|{drama}\n")
    with open(os.path.join(src, "u.data"), "w") as f:
        f.write("10\t1\t4\t881250949\n11\t2\t3\t881250950\nnot a rating\n12\t99\t5\t881250951\n")
    write_jpeg(os.path.join(src, "posters", "1.jpg"))


def make_official_movielens(src, users=True):
    """The official GroupLens ml-100k layout alone: u.data (tab separated),
    u.item (pipe separated, ISO-8859-1, with the placeholder movie 267) and
    u.user; no items.csv, no posters."""
    os.makedirs(src)
    genres = converters.MOVIELENS_GENRE_COLUMNS

    def flags(*names):
        return "|".join("1" if genre in names else "0" for genre in genres)
    with open(os.path.join(src, "u.item"), "w", encoding="latin-1", newline="") as f:
        f.write(f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|"
                f"{flags('Animation', 'Children', 'Comedy')}\n")
        f.write(f"2|Dead Man Walking (1995)|01-Jan-1995||http://x|{flags('Drama')}\n")
        f.write(f"3|Ma vie en rose (1997)|01-Jan-1997||http://y|{flags('Comedy', 'Drama')}\n")
        f.write(f"4|Café au lait (1993)|01-Jan-1993||http://z|{flags('Comedy')}\n")
        f.write(f"267|unknown||||{flags('genre_unknown')}\n")
        f.write("5|too few fields|01-Jan-1995\n")
    with open(os.path.join(src, "u.data"), "w", encoding="latin-1") as f:
        f.write("196\t1\t3\t881250949\n186\t2\t3\t891717742\n22\t4\t1\t878887116\n"
                "196\t267\t2\t880606923\n186\t1682\t5\t880606923\n")
    if users:
        with open(os.path.join(src, "u.user"), "w", encoding="latin-1") as f:
            f.write("196|49|M|writer|55105\n186|39|F|executive|00000\n22|25|M|writer|40206\n")


@pytest.mark.parametrize("users", [True, False])
def test_movielens_from_the_official_folder_alone(tmp_path, users):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_official_movielens(src, users)
    summary = converters.convert("movielens-100k", src, dst)
    assert summary == {
        "items": 5, "images": 0, "interactions": 4, "users": 3, "search_rows": 0,
        "skipped": {"u.item: malformed line": 1, "u.data: unknown item_id": 1},
    }
    items = read_rows(os.path.join(dst, "items.csv"))
    assert items[0] == {"item_id": "1", "title": "Toy Story (1995)", "description": "",
                        "image": "", "genres": "Animation|Children|Comedy", "year": "1995",
                        "language": ""}
    assert items[3]["title"] == "Café au lait (1993)"  # decoded from ISO-8859-1
    assert items[4] == {"item_id": "267", "title": "", "description": "", "image": "",
                        "genres": "unknown", "year": "", "language": ""}
    assert read_rows(os.path.join(dst, "interactions.csv"))[0] == {
        "user_id": "196", "item_id": "1", "timestamp": "881250949", "rating": "3.0"}
    dataset = read_dataset(dst)
    assert len(dataset.items) == 5 and len(dataset.interactions) == 4


def test_movielens_uses_posters_beside_the_official_files(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_official_movielens(src)
    write_jpeg(os.path.join(src, "posters", "2.jpg"))
    summary = converters.convert("movielens-100k", src, dst)
    assert summary["images"] == 1
    assert read_rows(os.path.join(dst, "items.csv"))[1]["image"] == "images/2.jpg"
    assert read_dataset(dst).report["images skipped"] == 0


def make_fashion(src):
    """Three products, the second repeated and the third without an image."""
    os.makedirs(src)
    header = ["product_id", "title", *converters.FASHION_ATTRIBUTES]
    shirt = ["11", "Red Shirt", "Apparel", "Topwear", "Shirts", "Red", "Casual"]
    write_rows(os.path.join(src, "products.csv"), header, [
        ["10", "Blue Jeans", "Apparel", "Bottomwear", "Jeans", "Blue", "Casual"],
        shirt, shirt,
        ["12", "Black Watch", "Accessories", "Watches", "Watches", "Black", "Formal"],
    ])
    write_jpeg(os.path.join(src, "images", "10.jpg"), "blue")
    write_jpeg(os.path.join(src, "images", "11.jpg"))


def make_home_depot(src):
    """Judgements of two products, with one bad relevance, one empty search term
    and one variant of a product's title."""
    os.makedirs(src)
    header = ["id", "product_uid", "product_title", "search_term", "relevance"]
    write_rows(os.path.join(src, "train.csv"), header, [
        ["1", "100001", "Angle Bracket", "angle bracket", "3.0"],
        ["2", "100001", "Angle Bracket, 12-Gauge", "l bracket", "2.33"],
        ["3", "100002", "Deck Paint", "deck paint", "high"],
        ["4", "100002", "Deck Paint", "", "2.0"],
        ["5", "100002", "Deck Paint", "wood coating", "4.5"],
        ["6", "100002", "Deck Paint", "wood coating", "1.0"],
    ])


def test_movielens_from_small_source(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_movielens(src)
    summary = converters.convert("movielens-100k", src, dst)
    assert summary == {
        "items": 2, "images": 1, "interactions": 2, "users": 2, "search_rows": 0,
        "skipped": {"items.csv: duplicate movie_id": 1, "u.data: malformed line": 1,
                    "u.data: unknown item_id": 1},
    }
    items = read_rows(os.path.join(dst, "items.csv"))
    assert items == [
        {"item_id": "1", "title": "Toy Story (1995)", "description": "Toys, alive.",
         "image": "images/1.jpg", "genres": "Action|Comedy", "year": "1995", "language": "en"},
        # Only u.item knows movie 2: no overview, no poster, no language.
        {"item_id": "2", "title": "Café (1996)", "description": "", "image": "",
         "genres": "Drama", "year": "1996", "language": ""},
    ]
    poster, original = os.path.join(dst, "images", "1.jpg"), os.path.join(src, "posters", "1.jpg")
    assert not os.path.islink(poster)
    with open(poster, "rb") as f, open(original, "rb") as g:
        assert f.read() == g.read()
    assert read_rows(os.path.join(dst, "interactions.csv")) == [
        {"user_id": "10", "item_id": "1", "timestamp": "881250949", "rating": "4.0"},
        {"user_id": "11", "item_id": "2", "timestamp": "881250950", "rating": "3.0"},
    ]
    read_dataset(dst)


def test_fashion_from_small_source(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_fashion(src)
    os.makedirs(dst)
    with open(os.path.join(dst, "interactions.csv"), "w") as f:
        f.write("user_id,item_id\nu,10\n")  # left by an earlier conversion
    summary = converters.convert("fashion-small", src, dst)
    assert summary == {"items": 3, "images": 2, "interactions": 0, "users": 0, "search_rows": 0,
                       "skipped": {"products.csv: duplicate product_id": 1}}
    assert not os.path.exists(os.path.join(dst, "interactions.csv"))
    items = read_rows(os.path.join(dst, "items.csv"))
    assert list(items[0]) == [*converters.ITEM_COLUMNS, *converters.FASHION_ATTRIBUTES]
    assert [(item["item_id"], item["image"], item["colour"]) for item in items] == [
        ("10", "images/10.jpg", "Blue"), ("11", "images/11.jpg", "Red"), ("12", "", "Black")]
    read_dataset(dst)


def test_fashion_limit_takes_the_first_products(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_fashion(src)
    summary = converters.convert("fashion-small", src, dst, limit=1)
    assert (summary["items"], summary["images"]) == (1, 1)
    assert os.listdir(os.path.join(dst, "images")) == ["10.jpg"]


def test_home_depot_from_small_source(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_home_depot(src)
    summary = converters.convert("home-depot", src, dst)
    assert summary == {
        "items": 2, "images": 0, "interactions": 3, "users": 0, "search_rows": 3,
        "skipped": {"train.csv: relevance not in 1-3": 2, "train.csv: empty search_term": 1,
                    "train.csv: product_title differs from the product's first": 1},
    }
    assert read_rows(os.path.join(dst, "items.csv")) == [
        {"item_id": "100001", "title": "Angle Bracket", "description": "", "image": ""},
        {"item_id": "100002", "title": "Deck Paint", "description": "", "image": ""},
    ]
    assert read_rows(os.path.join(dst, "interactions.csv")) == [
        {"user_id": "", "item_id": "100001", "rating": "3.0", "query": "angle bracket"},
        {"user_id": "", "item_id": "100001", "rating": "2.33", "query": "l bracket"},
        {"user_id": "", "item_id": "100002", "rating": "1.0", "query": "wood coating"},
    ]
    read_dataset(dst)


def drop_column(path, column):
    rows = read_rows(path)
    header = [c for c in rows[0] if c != column]
    write_rows(path, header, [[row[c] for c in header] for row in rows])


def make_online_retail(src):
    """UCI's column layout and date format: a customer buying twice, a cancellation,
    postage, a line without a customer and a line repeated within an invoice."""
    os.makedirs(src)
    header = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice",
              "CustomerID", "Country"]
    write_rows(os.path.join(src, "online_retail.csv"), header, [
        ["536365", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "6", "12/1/2010 8:26", "2.55",
         "17850.0", "United Kingdom"],
        ["536365", "71053", "WHITE METAL LANTERN", "6", "12/1/2010 8:26", "3.39", "17850.0",
         "United Kingdom"],
        ["536365", "71053", "WHITE METAL LANTERN", "2", "12/1/2010 8:26", "3.39", "17850.0",
         "United Kingdom"],
        ["536366", "POST", "POSTAGE", "1", "12/1/2010 8:28", "18.00", "17850.0", "United Kingdom"],
        ["536367", "85123A", "CREAM HANGING HEART T-LIGHT HOLDER", "8", "12/2/2010 9:00", "2.55",
         "", "United Kingdom"],
        ["C536368", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "-6", "12/3/2010 10:00",
         "2.55", "17850.0", "United Kingdom"],
        ["536369", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "12", "12/5/2010 11:30",
         "2.55", "17850.0", "United Kingdom"],
        ["536370", "22752", "SET 7 BABUSHKA NESTING BOXES", "2", "12/5/2010 12:00", "7.65",
         "13047.0", "United Kingdom"],
    ])


SOURCE_MAKERS = {
    "movielens-100k": make_movielens, "fashion-small": make_fashion, "home-depot": make_home_depot,
    "online-retail": make_online_retail,
}


def test_online_retail(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_online_retail(src)
    summary = converters.convert("online-retail", src, dst)
    assert summary == {
        "items": 3, "images": 0, "interactions": 4, "users": 2, "search_rows": 0,
        "source_rows": 8, "skipped": {
            "online_retail.csv: same customer, InvoiceDate and StockCode as an earlier line": 1,
            "online_retail.csv: non-product StockCode": 1,
            "online_retail.csv: no CustomerID": 1,
            "online_retail.csv: cancellation": 1}}
    assert read_rows(os.path.join(dst, "interactions.csv")) == [
        {"user_id": "17850", "item_id": "85123A", "timestamp": "1291191960"},
        {"user_id": "17850", "item_id": "71053", "timestamp": "1291191960"},
        {"user_id": "17850", "item_id": "85123A", "timestamp": "1291548600"},
        {"user_id": "13047", "item_id": "22752", "timestamp": "1291550400"}]
    items = read_rows(os.path.join(dst, "items.csv"))
    assert [(item["item_id"], item["title"]) for item in items] == [
        ("85123A", "WHITE HANGING HEART T-LIGHT HOLDER"), ("71053", "WHITE METAL LANTERN"),
        ("22752", "SET 7 BABUSHKA NESTING BOXES")]
    dataset = read_dataset(dst)
    assert len(dataset.interactions) == 4


@pytest.mark.parametrize("name, file, column", [
    ("movielens-100k", "u.data", None),
    ("movielens-100k", "u.item", None),
    ("movielens-100k", "items.csv", "overview"),
    ("fashion-small", "products.csv", None),
    ("fashion-small", "products.csv", "colour"),
    ("home-depot", "train.csv", None),
    ("home-depot", "train.csv", "search_term"),
    ("online-retail", "online_retail.csv", None),
    ("online-retail", "online_retail.csv", "CustomerID"),
])
def test_broken_source_names_what_is_missing(tmp_path, name, file, column):
    """Without the file (column None), or without the column of the file."""
    src = str(tmp_path / "src")
    SOURCE_MAKERS[name](src)
    if column is None:
        os.remove(os.path.join(src, file))
    else:
        drop_column(os.path.join(src, file), column)
    with pytest.raises(ValueError, match=re.escape(column or file)):
        converters.convert(name, src, str(tmp_path / "dst"))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown data set"):
        converters.convert("movielens-1m", str(tmp_path), str(tmp_path / "dst"))
    with pytest.raises(ValueError, match="does not exist"):
        converters.convert("home-depot", str(tmp_path / "nowhere"), str(tmp_path / "dst"))
    with pytest.raises(ValueError, match="limit"):
        converters.convert("home-depot", str(tmp_path), str(tmp_path / "dst"), limit=5)


def real_source(folder):
    """The real data set's folder under $MMFUSE_DATA_DIR; skips the test without it."""
    data_dir = os.environ.get("MMFUSE_DATA_DIR")
    if not data_dir or not os.path.isdir(os.path.join(data_dir, folder)):
        pytest.skip(f"needs $MMFUSE_DATA_DIR/{folder}")
    return os.path.join(data_dir, folder)


@pytest.mark.real_data
def test_real_movielens(tmp_path):
    src, dst = real_source("movielens-100k"), str(tmp_path)
    summary = converters.convert("movielens-100k", src, dst)
    assert (summary["items"], summary["interactions"], summary["users"]) == (1682, 100_000, 943)
    # items.csv repeats 64 rows; nothing else is skipped.
    assert summary["skipped"] == {"items.csv: duplicate movie_id": 64}
    items = read_rows(os.path.join(dst, "items.csv"))
    posters = set(os.listdir(os.path.join(src, "posters")))
    with_image = [item for item in items if item["image"]]
    # Every movie with a poster has its image, and only those.
    assert [item["image"] for item in items] == [
        f"images/{item['item_id']}.jpg" if f"{item['item_id']}.jpg" in posters else ""
        for item in items]
    assert summary["images"] == len(with_image) >= 1650
    for item in with_image:
        path = os.path.join(dst, item["image"])
        poster = os.path.join(src, "posters", os.path.basename(path))
        assert os.path.isfile(path) and not os.path.islink(path)
        assert os.path.getsize(path) == os.path.getsize(poster)
    assert sum(1 for item in items if item["description"]) > 0.95 * len(items)
    assert sum(1 for item in items if item["genres"] and item["year"]) > 0.99 * len(items)
    dataset = read_dataset(dst)
    assert dataset.report["images skipped"] == 0


OFFICIAL_ML_100K = ("u.data", "u.item", "u.user", "u.genre", "u.occupation", "u.info", "README")


@pytest.mark.real_data
def test_real_movielens_official_files_alone(tmp_path):
    """The GroupLens ml-100k files without the TMDB extras (items.csv, posters)."""
    real = real_source("movielens-100k")
    src = tmp_path / "ml-100k"
    src.mkdir()
    for name in OFFICIAL_ML_100K:
        if os.path.exists(os.path.join(real, name)):
            os.symlink(os.path.join(real, name), src / name)
    if not (src / "u.item").exists() or not (src / "u.data").exists():
        pytest.skip("needs the official u.data and u.item")
    dst = str(tmp_path / "dst")
    summary = converters.convert("movielens-100k", str(src), dst)
    assert (summary["items"], summary["interactions"], summary["users"]) == (1682, 100_000, 943)
    assert (summary["images"], summary["skipped"]) == (0, {})
    items = read_rows(os.path.join(dst, "items.csv"))
    assert sum(1 for item in items if item["title"] and item["genres"] and item["year"]) >= 1680
    assert not any(item["description"] for item in items)
    dataset = read_dataset(dst)
    assert len(dataset.items) == 1682 and len(dataset.interactions) == 100_000


@pytest.mark.real_data
def test_real_fashion_first_products(tmp_path):
    src, dst = real_source("fashion-product-images-small"), str(tmp_path)
    summary = converters.convert("fashion-small", src, dst, limit=500)
    assert summary == {"items": 500, "images": 500, "interactions": 0, "users": 0, "search_rows": 0,
                       "skipped": {}}
    assert not os.path.exists(os.path.join(dst, "interactions.csv"))
    items = read_rows(os.path.join(dst, "items.csv"))
    assert all(item["title"] and item["article_type"] and item["colour"] for item in items)
    dataset = read_dataset(dst)
    assert dataset.report["images skipped"] == 0


@pytest.mark.real_data
def test_real_fashion_whole_catalogue(tmp_path):
    src = real_source("fashion-product-images-small")
    summary = converters.convert("fashion-small", src, str(tmp_path))
    assert summary == {"items": 44_072, "images": 44_072, "interactions": 0, "users": 0,
                       "search_rows": 0, "skipped": {}}
    assert len(os.listdir(tmp_path / "images")) == 44_072


@pytest.mark.real_data
def test_real_home_depot(tmp_path):
    src, dst = real_source("home-depot-search-relevance"), str(tmp_path)
    summary = converters.convert("home-depot", src, dst)
    assert (summary["items"], summary["interactions"], summary["images"]) == (54_667, 74_067, 0)
    # Only a few products carry a second title; every judgement is kept.
    assert set(summary["skipped"]) <= {"train.csv: product_title differs from the product's first"}
    interactions = read_rows(os.path.join(dst, "interactions.csv"))
    assert list(interactions[0]) == ["user_id", "item_id", "rating", "query"]
    assert len({row["query"] for row in interactions}) == 11_795
    assert all(not row["user_id"] and 1.0 <= float(row["rating"]) <= 3.0 for row in interactions)
    read_dataset(dst)


@pytest.mark.real_data
def test_real_online_retail(tmp_path):
    src, dst = real_source("online-retail"), str(tmp_path)
    summary = converters.convert("online-retail", src, dst)
    # The counts of the data set's README: 406,829 rows, 8,905 cancellations.
    assert summary["source_rows"] == 406_829
    assert summary["skipped"]["online_retail.csv: cancellation"] == 8_905
    assert summary["skipped"]["online_retail.csv: non-product StockCode"] == 1_554
    assert summary["users"] == 4_335
    assert 3_600 < summary["items"] < 3_665
    assert summary["interactions"] == 406_829 - sum(summary["skipped"].values())
    read_dataset(dst, check_images=False)
