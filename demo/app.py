"""The demo page: a search box, a photo upload, a user's history beside their
recommendations, and the items similar to any item shown.

The answers come from the model ONLY over TF Serving's gRPC Predict API
(serving/client.py, as `mmfuse query` asks), so the page works unchanged
against real TF Serving. The dataset directory supplies what the model does
not hold: photos, full titles and users' histories. Users are asked about by
their pseudonym under the pipeline's user key, as `mmfuse query --user` does
(docs/privacy.md); the page and its URLs use the raw ids of interactions.csv.

Photos are served by item id, from the paths items.csv names (checked by
dataset/contract.py to stay inside the dataset directory): no URL names a file.
"""
import base64
import collections
import dataclasses
import datetime
import threading
from typing import Dict, List, Optional, Sequence

import flask
import grpc
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from dataset import contract
from mmfuse.config import PipelineSettings
from serving import client
from serving.image_header import ImageHeaderError, image_size

# An upload is one photo; the server refuses requests over 16 MiB anyway
# (serving.max_request_bytes), and a bound here refuses before reading it all.
MAX_UPLOAD_BYTES = 10 << 20
UPLOAD_FORMATS = ("JPEG", "PNG")
MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}
HISTORY_SHOWN = 24
USERS_OFFERED = 2000  # in the user picker's list; any id can still be typed
USERS_TO_TRY = 6
ITEMS_TO_BROWSE = 12


@dataclasses.dataclass(frozen=True)
class Card:
    """One item as the page shows it: photo (URL, or None), title and a
    line of detail (a score, or when and how the user interacted)."""
    item_id: str
    title: str
    photo_url: Optional[str]
    detail: str = ""


@dataclasses.dataclass
class Catalogue:
    """What the page shows of a dataset: its items by id, and each user's
    interactions (raw user ids), newest first."""
    directory: str
    items: Dict[str, contract.Item]
    histories: Dict[str, List[contract.Interaction]]


def read_catalogue(data_dir: str) -> Catalogue:
    """The dataset at `data_dir`, read and checked by dataset/contract.py
    (DatasetError naming what is wrong); items whose image is unusable get
    no photo."""
    dataset = contract.read_dataset(data_dir)
    histories: Dict[str, List[contract.Interaction]] = collections.defaultdict(list)
    for interaction in dataset.interactions:
        if interaction.user_id:  # anonymous search rows belong to nobody
            histories[interaction.user_id].append(interaction)
    for rows in histories.values():
        # Rows without a timestamp keep file order, after the dated ones.
        rows.sort(key=lambda row: (row.timestamp is not None, row.timestamp or 0, row.row),
                  reverse=True)
    return Catalogue(dataset.directory, dataset.items, dict(histories))


class Model:
    """The served model, asked over one gRPC channel opened on first use
    (and again after a failed connect)."""

    def __init__(self, server: str, *, model_name: str = client.DEFAULT_MODEL_NAME,
                 k: int = client.DEFAULT_K, timeout: float = client.DEFAULT_TIMEOUT_S,
                 credentials: Optional[grpc.ChannelCredentials] = None,
                 user_key: Optional[bytes] = None):
        """server: HOST:PORT; k: items per answer; timeout: seconds to wait
        for the server and for each answer; credentials: TLS (None:
        plaintext); user_key: the pipeline's key, users are sent as their
        pseudonyms under it (None: as given)."""
        self.server, self.model_name, self.k, self.timeout = server, model_name, k, timeout
        self._credentials = credentials
        self._user_key = user_key
        self._channel: Optional[grpc.Channel] = None
        self._lock = threading.Lock()

    def channel(self) -> grpc.Channel:
        """The channel; ConnectionError when nothing answers at the server."""
        with self._lock:
            if self._channel is None:
                self._channel = client.connect(self.server, self.timeout, self._credentials)
            return self._channel

    def ask(self, **question) -> client.Answer:
        """The answer to one `client.question` (user=, text=, image=, item=);
        grpc.RpcError when the server refuses it."""
        signature, inputs = client.question(**question, user_key=self._user_key)
        request = client.predict_request(signature, inputs, self.k, self.model_name)
        return client.ask(self.channel(), request, self.timeout)


def create_app(catalogue: Catalogue, model: Model,
               max_upload_bytes: int = MAX_UPLOAD_BYTES) -> flask.Flask:
    """The Flask app of the page over `catalogue` asking `model`; uploads
    over `max_upload_bytes` are refused (413)."""
    app = flask.Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes

    def card(item_id: str, model_title: str = "", detail: str = "") -> Card:
        item = catalogue.items.get(item_id)
        photo = (flask.url_for("photo", item_id=item_id) if item and item.image_path else None)
        return Card(item_id, display_title(item_id, item, model_title), photo, detail)

    def answer_cards(answer: client.Answer) -> List[Card]:
        titles = answer.titles[0] if answer.titles else [""] * len(answer.item_ids[0])
        return [card(item_id, title, f"score {score:.4f}")
                for item_id, score, title in zip(answer.item_ids[0], answer.scores[0], titles)]

    def results(heading: str, answer: client.Answer, notes: Sequence[str] = (),
                answer_heading: str = "Results", **extra):
        return flask.render_template(
            "results.html", heading=heading, notes=list(notes), cards=answer_cards(answer),
            answer_heading=answer_heading,
            source=f"{answer.signature}, model {model.model_name} version {answer.model_version}",
            **extra)

    @app.get("/")
    def index():
        users = sorted(catalogue.histories, key=lambda user: (-len(catalogue.histories[user]), user))
        browse = [card(item_id) for item_id in list(catalogue.items)[:ITEMS_TO_BROWSE]]
        return flask.render_template("index.html", users_to_try=users[:USERS_TO_TRY],
                                     users=sorted(users[:USERS_OFFERED]), cards=browse)

    @app.get("/search")
    def search():
        text = flask.request.args.get("q", "").strip()
        if not text:
            return flask.redirect(flask.url_for("index"))
        return results(f"Search: {text}", model.ask(text=text), query=text)

    @app.post("/image")
    def image_search():
        upload = flask.request.files.get("photo")
        data = upload.read() if upload else b""
        if not data:
            flask.abort(400, "Choose a photo (JPEG or PNG) to search by.")
        try:
            kind = image_size(data)[0]
        except ImageHeaderError:
            kind = None
        if kind not in UPLOAD_FORMATS:
            flask.abort(400, f"{upload.filename or 'The upload'} is not a JPEG or PNG photo.")
        shown = f"data:{MIME_TYPES[kind]};base64,{base64.b64encode(data).decode('ascii')}"
        return results(f"Photo search: {upload.filename or 'your photo'}", model.ask(image=data),
                       answer_heading="Similar looking items",
                       uploaded=shown)

    @app.get("/user")
    def pick_user():
        user_id = flask.request.args.get("id", "").strip()
        if not user_id:
            return flask.redirect(flask.url_for("index"))
        return flask.redirect(flask.url_for("user", user_id=user_id))

    @app.get("/user/<path:user_id>")
    def user(user_id: str):
        rows = catalogue.histories.get(user_id, [])
        answer = model.ask(user=user_id)
        notes = []
        if not rows:
            notes.append(f"User {user_id} has no interactions in {contract.INTERACTIONS_FILE}.")
        if answer.known_user is not None and not answer.known_user[0]:
            notes.append(f"User {user_id} is unknown to the model: this is the cold-start answer "
                         "(what a user with no history is recommended). For a user the dataset "
                         "has, the user key file may not be the one the model was trained with.")
        history = [card(row.item_id, detail=history_detail(row)) for row in rows[:HISTORY_SHOWN]]
        return results(f"User {user_id}", answer, notes, "Recommended", history=history,
                       history_count=len(rows))

    @app.get("/item/<path:item_id>")
    def item(item_id: str):
        answer = model.ask(item=item_id)
        asked, known = card(item_id), catalogue.items.get(item_id)
        return results(f"Similar to {asked.title}", answer, answer_heading="Similar items",
                       item=asked, item_text=known.description if known else "",
                       item_attributes=", ".join(contract.attribute_tokens(known)) if known else "")

    @app.get("/images/<path:item_id>")
    def photo(item_id: str):
        item = catalogue.items.get(item_id)
        if item is None or not item.image_path:
            flask.abort(404, f"No photo of item {item_id} in {contract.ITEMS_FILE}.")
        try:
            data = contract.read_bytes(item.image_path, PipelineSettings().max_image_bytes)
            kind = image_size(data)[0]
        except (OSError, ImageHeaderError):  # gone, replaced or grown since startup
            flask.abort(404, f"The photo of item {item_id} cannot be read.")
        response = flask.Response(data, mimetype=MIME_TYPES.get(kind, "application/octet-stream"))
        response.cache_control.max_age = 3600
        return response

    @app.errorhandler(HTTPException)
    def refused(error: HTTPException):
        return error_page(error.code, error.name, error.description)

    @app.errorhandler(grpc.RpcError)
    def model_refused(error: grpc.RpcError):
        return error_page(502, "The model server refused",
                          f"{error.code().name}: {error.details()}")

    @app.errorhandler(ConnectionError)
    def no_model_server(error: ConnectionError):
        return error_page(503, "No model server", str(error))

    return app


def display_title(item_id: str, item: Optional[contract.Item], model_title: str = "") -> str:
    """The dataset's title (whole; the model's is cut to export.title_length),
    else the model's, else the item's attribute values ("green mug ceramic"),
    else its id."""
    if item and item.title:
        return item.title
    attributes = " ".join(value for _, value in contract.attribute_values(item)) if item else ""
    return model_title or attributes or item_id


def history_detail(row: contract.Interaction) -> str:
    """When and how a user interacted: "2020-09-14 · rated 4 · searched 'red mug'"."""
    parts = []
    if row.timestamp is not None:
        parts.append(datetime.datetime.fromtimestamp(row.timestamp, datetime.timezone.utc)
                     .strftime("%Y-%m-%d"))
    if row.rating is not None:
        parts.append(f"rated {row.rating:g}")
    if row.query:
        parts.append(f"searched '{row.query}'")
    return " · ".join(parts)


def error_page(status: int, title: str, message: str):
    return flask.render_template("error.html", status=status, title=title, message=message), status


def http_server(app: flask.Flask, host: str = "127.0.0.1", port: int = 8080):
    """A threaded HTTP server of `app` on HOST:PORT (port 0: a free one, then
    `.server_port`), not yet serving; OSError when the port is taken."""
    try:
        return make_server(host, port, app, threaded=True)
    except SystemExit:  # werkzeug's way to fail: it has printed why (the port taken, ...)
        raise OSError(f"cannot listen on {host}:{port}") from None


def serve(app: flask.Flask, host: str = "127.0.0.1", port: int = 8080, announce=print) -> None:
    """Serves `app` on HOST:PORT until interrupted; `announce` is told the page's URL."""
    server = http_server(app, host, port)
    shown_host = f"[{host}]" if ":" in host else host
    announce(f"demo page at http://{shown_host}:{server.server_port}/")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
