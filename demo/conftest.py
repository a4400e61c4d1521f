"""A model server over serving's tiny stand-in model, a dataset directory of
its items (photos, titles, users' histories) and the demo app over both."""
import csv
import os
import shutil
import threading

import pytest
from PIL import Image

from demo import app as demo_app
from serving.conftest import (  # noqa: F401 - user_key_file: a fixture the demo tests use
    ITEMS, USER_KEY, save_tiny_model, small_batches, user_key_file)
from serving.server import ModelServer

# The tiny model's items, less the last (served with the model's title and no
# photo), and one item the model does not know (similar_items refuses it).
DATASET_ITEMS = ITEMS[:-1] + ["p9999"]
NO_PHOTO = "p0011"
MODEL_ONLY = ITEMS[-1]
UNKNOWN_TO_MODEL = "p9999"
# Raw user ids; the model knows u0001 and u0002 by their pseudonyms, not u0003.
HISTORIES = {
    "u0001": [("p0003", 1600000300, "4", ""), ("p0001", 1600000100, "5", "red mug"),
              ("p0002", 1600000200, "", "")],
    "u0002": [("p0004", 1600000000, "3", "")],
    "u0003": [("p0005", 1600000000, "2", "")],
}


def title(item_id: str) -> str:
    """The dataset's title of an item (the tiny model calls it 'Title of <id>')."""
    return f"Mug <b>{item_id}</b>" if item_id == "p0010" else f"Shop title {item_id}"


def write_dataset(directory) -> None:
    """items.csv (photos of distinct colours under images/), interactions.csv
    (HISTORIES in shuffled order, and an anonymous search row)."""
    os.makedirs(os.path.join(directory, "images"))
    with open(os.path.join(directory, "items.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "title", "image", "colour"])
        for index, item_id in enumerate(DATASET_ITEMS):
            image = "" if item_id == NO_PHOTO else f"images/{item_id}.png"
            if image:
                Image.new("RGB", (32, 24), (20 * index, 255 - 20 * index, 90)).save(
                    os.path.join(directory, image))
            writer.writerow([item_id, title(item_id), image, f"c{index % 3}"])
    with open(os.path.join(directory, "interactions.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "timestamp", "rating", "query"])
        for user_id, rows in HISTORIES.items():
            for item_id, timestamp, rating, query in rows:
                writer.writerow([user_id, item_id, timestamp, rating, query])
        writer.writerow(["", "p0006", 1600000000, "", "a search by nobody"])


@pytest.fixture(scope="session")
def model_server(tmp_path_factory):
    """`mmfuse serve`'s server over the tiny model, on a free port."""
    base = tmp_path_factory.mktemp("demo-served") / "mmfuse"
    save_tiny_model(str(base / "1"))
    server = ModelServer(str(base), port=0, batching_parameters=small_batches(),
                         announce=lambda line: None)
    server.start()
    yield server
    server.stop(grace=0)


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("demo-data") / "shop"
    write_dataset(str(directory))
    return directory


def model_of(server, user_key=USER_KEY, **settings) -> demo_app.Model:
    """The demo's Model asking `server` all 12 items (the tiny model's whole catalogue)."""
    return demo_app.Model(f"127.0.0.1:{server.port}", user_key=user_key, k=12, **settings)


def expected_cards(answer) -> list:
    """(item id, title, photo URL or None) the page must show for an answer:
    the dataset's title and photo, or for an item the dataset lacks, the
    model's title (else its id) and no photo."""
    return [(item_id, title(item_id), None if item_id == NO_PHOTO else f"/images/{item_id}")
            if item_id in DATASET_ITEMS else (item_id, model_title or item_id, None)
            for item_id, model_title in zip(answer.item_ids[0], answer.titles[0])]


@pytest.fixture(scope="session")
def catalogue(dataset_dir):
    return demo_app.read_catalogue(str(dataset_dir))


@pytest.fixture
def page(model_server, catalogue):
    """A Flask test client of the demo over the tiny model's server."""
    return demo_app.create_app(catalogue, model_of(model_server)).test_client()


@pytest.fixture
def live_page(model_server, catalogue):
    """The demo served over HTTP on a free port, for a browser: its base URL."""
    server = demo_app.http_server(demo_app.create_app(catalogue, model_of(model_server)),
                                  "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def fresh_dir(tmp_path):
    """An empty directory, removed afterwards even when a browser left files in it."""
    path = tmp_path / "fresh"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)
