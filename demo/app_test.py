"""The demo page's routes, through Flask's test client, against `mmfuse
serve`'s server over the tiny model: each page shows what the model answers
over gRPC, with the dataset's photos and titles, and every refusal is a
readable page."""
import html
import io
import re
import socket
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest
from PIL import Image

from demo import app as demo_app
from demo.conftest import (HISTORIES, MODEL_ONLY, NO_PHOTO, UNKNOWN_TO_MODEL, expected_cards,
                           model_of, title)
from mmfuse.cli import main
from serving.conftest import TITLES

REPOSITORY = __file__.rsplit("/demo/", 1)[0]


def cards(page_html: str, section: str = "") -> list:
    """(item id, title, photo URL or None) of each card, in the page's order;
    with `section` ("history", "answer"), of that section only."""
    if section:
        page_html = page_html.split(f'<section class="{section}">', 1)[1].split("</section>", 1)[0]
    found = []
    for card in re.findall(r'<li class="card">(.*?)</li>', page_html, flags=re.S):
        item_id = urllib.parse.unquote(re.search(r'href="/item/([^"]+)"', card).group(1))
        photo = re.search(r'<img src="([^"]+)"', card)
        shown = html.unescape(re.search(r'class="title">([^<]*)</span>', card).group(1))
        found.append((item_id, shown, photo.group(1) if photo else None))
    return found


def png(colour=(200, 30, 30), size=(40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def readable(response, status: int, *phrases: str) -> str:
    """The page (HTML) of a refusal: its status, the phrases (as read), the
    start page's link, no trace."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert "<h1>" in text and 'href="/"' in text and "Traceback" not in text
    for phrase in phrases:
        assert phrase in html.unescape(text)
    return text


def test_the_start_page_offers_search_upload_users_and_items(page):
    response = page.get("/")
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'action="/search"' in text and 'name="q"' in text
    assert 'action="/image"' in text and 'enctype="multipart/form-data"' in text
    assert all(f'<option value="{user}">' in text for user in HISTORIES)
    assert 'href="/user/u0001"' in text  # the users with most history, to try
    assert [card[0] for card in cards(text)][:3] == ["p0001", "p0002", "p0003"]


def test_search_shows_the_models_answer_with_photos_and_titles(page, model_server):
    response = page.get("/search", query_string={"q": "red mug"})
    assert response.status_code == 200
    answer = model_of(model_server).ask(text="red mug")
    shown = cards(response.get_data(as_text=True), "answer")
    assert shown == expected_cards(answer)
    assert len(shown) == 12 and (MODEL_ONLY, TITLES[MODEL_ONLY], None) in shown
    assert (NO_PHOTO, title(NO_PHOTO), None) in shown
    # Titles are escaped, not markup.
    assert "Mug &lt;b&gt;p0010&lt;/b&gt;" in response.get_data(as_text=True)


def test_an_empty_search_goes_back_to_the_start_page(page):
    response = page.get("/search?q=+")
    assert response.status_code == 302 and response.location.endswith("/")


def test_a_users_history_is_shown_beside_their_recommendations(page, model_server):
    response = page.get("/user/u0001")
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    newest_first = [row[0] for row in sorted(HISTORIES["u0001"], key=lambda row: -row[1])]
    history = cards(text, "history")
    assert [card[0] for card in history] == newest_first == ["p0003", "p0002", "p0001"]
    assert history[0] == ("p0003", title("p0003"), "/images/p0003")
    assert "2020-09-13 · rated 5 · searched &#39;red mug&#39;" in text
    # Asked by pseudonym, as `mmfuse query --user` asks: the model knows the user.
    assert cards(text, "answer") == expected_cards(model_of(model_server).ask(user="u0001"))
    assert "unknown to the model" not in text


def test_the_user_picker_leads_to_the_users_page(page):
    response = page.get("/user", query_string={"id": "u0002"})
    assert response.status_code == 302 and response.location.endswith("/user/u0002")


def test_an_unknown_user_gets_a_readable_cold_start_page(page, model_server):
    text = readable(page.get("/user/nobody"), 200, "User nobody has no interactions",
                    "User nobody is unknown to the model: this is the cold-start answer")
    assert cards(text, "history") == []
    assert cards(text, "answer") == expected_cards(model_of(model_server).ask(user="nobody"))
    # A user the dataset has but the model lacks is told so beside their history.
    text = readable(page.get("/user/u0003"), 200, "User u0003 is unknown to the model")
    assert [card[0] for card in cards(text, "history")] == ["p0005"]


def test_with_another_user_key_the_users_are_unknown_to_the_model(model_server, catalogue):
    page = demo_app.create_app(catalogue, model_of(model_server, user_key=b"k" * 32)).test_client()
    readable(page.get("/user/u0001"), 200, "User u0001 is unknown to the model",
             "may not be the one the model was trained with")


def test_an_item_shows_its_similar_items(page, model_server):
    response = page.get("/item/p0002")
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    answer = model_of(model_server).ask(item="p0002")
    assert cards(text, "answer") == expected_cards(answer) and "p0002" not in answer.item_ids[0]
    assert "<h1>Similar to Shop title p0002</h1>" in text and "colour=c1" in text


def test_a_photo_upload_searches_by_it(page, model_server):
    photo = png()
    response = page.post("/image", data={"photo": (io.BytesIO(photo), "red.png")},
                         content_type="multipart/form-data")
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert cards(text, "answer") == expected_cards(model_of(model_server).ask(image=photo))
    assert "Photo search: red.png" in text and 'src="data:image/png;base64,' in text


@pytest.mark.parametrize("upload, phrase", [
    (None, "Choose a photo"),
    ((b"", "empty.png"), "Choose a photo"),
    ((b"GIF89a" + b"\0" * 20, "cat.gif"), "cat.gif is not a JPEG or PNG photo"),
    ((b"just text", "notes.txt"), "notes.txt is not a JPEG or PNG photo"),
])
def test_an_upload_that_is_no_photo_is_refused_readably(page, upload, phrase):
    data = {} if upload is None else {"photo": (io.BytesIO(upload[0]), upload[1])}
    readable(page.post("/image", data=data, content_type="multipart/form-data"), 400, phrase)


def test_an_upload_over_the_bound_is_refused_before_it_is_asked(model_server, catalogue):
    page = demo_app.create_app(catalogue, model_of(model_server),
                               max_upload_bytes=10_000).test_client()
    big = png(size=(400, 400)) + b"\0" * 20_000
    readable(page.post("/image", data={"photo": (io.BytesIO(big), "big.png")},
                       content_type="multipart/form-data"), 413, "Request Entity Too Large")


def test_photos_are_the_datasets_own(page, dataset_dir):
    response = page.get("/images/p0003")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.data == (dataset_dir / "images" / "p0003.png").read_bytes()


@pytest.mark.parametrize("path", [
    "/images/../items.csv", "/images/..%2Fitems.csv", "/images/%2E%2E/%2E%2E/etc/passwd",
    "/images/images/p0003.png", "/images/%2Fetc%2Fpasswd", "/images//etc/passwd",
    "/images/items.csv", "/images/p0003/../../interactions.csv", "/images/" + NO_PHOTO,
    "/images/" + MODEL_ONLY,
])
def test_nothing_but_an_items_photo_is_served(page, path):
    response = page.get(path, follow_redirects=True)
    assert response.status_code == 404
    assert b"user_id" not in response.data and b"root:" not in response.data


def test_a_refusal_by_the_model_is_a_readable_page(page):
    readable(page.get(f"/item/{UNKNOWN_TO_MODEL}"), 502, "The model server refused",
             "INVALID_ARGUMENT", UNKNOWN_TO_MODEL)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_no_model_server_is_a_readable_page(catalogue):
    model = demo_app.Model(f"127.0.0.1:{_free_port()}", timeout=0.5)
    page = demo_app.create_app(catalogue, model).test_client()
    readable(page.get("/search?q=mug"), 503, "No model server", "no gRPC server answers at")


def test_the_demo_command_serves_the_page(model_server, dataset_dir, user_key_file):
    """`mmfuse demo --server --data`, as the README gives it, in its own process."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "mmfuse", "demo", "--server", f"127.0.0.1:{model_server.port}",
         "--data", str(dataset_dir), "--port", "0", "--user-key-file", str(user_key_file)],
        cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        printed = []
        for line in demo.stdout:  # TensorFlow may log first
            printed.append(line)
            url = re.match(r"demo page at (http://127\.0\.0\.1:\d+/) \(asking 127\.0\.0\.1:\d+\)", line)
            if url:
                break
        assert url, "".join(printed)
        with urllib.request.urlopen(url.group(1) + "user/u0001", timeout=30) as response:
            text = response.read().decode("utf-8")
        assert [card[0] for card in cards(text, "history")] == ["p0003", "p0002", "p0001"]
        assert "unknown to the model" not in text
    finally:
        demo.terminate()
        demo.wait(timeout=30)


def test_the_demo_command_says_what_is_wrong_before_serving(model_server, dataset_dir,
                                                            user_key_file, tmp_path, capsys):
    server = ["--server", f"127.0.0.1:{model_server.port}"]
    assert main(["demo", *server, "--data", str(tmp_path / "none"),
                 "--user-key-file", str(user_key_file)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["demo", *server, "--data", str(dataset_dir),
                 "--user-key-file", str(tmp_path / "no-key")]) == 2
    assert "cannot read the user key file" in capsys.readouterr().err
    assert main(["demo", "--server", f"127.0.0.1:{_free_port()}", "--timeout", "0.5",
                 "--data", str(dataset_dir), "--user-key-file", str(user_key_file)]) == 1
    assert "no gRPC server answers at" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["demo", *server, "--data", str(dataset_dir), "--user-key-file",
                     str(user_key_file), "--port", str(taken.getsockname()[1])]) == 2
    assert "mmfuse demo: error: cannot listen on 127.0.0.1:" in capsys.readouterr().err
