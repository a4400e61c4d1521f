"""Kinds of bad dataset directory, and what `mmfuse run` must make of each:
exit 2 with a message naming the file, line and field, or (where the contract
allows one) a counted, reported skip.

`python -m tests.bad_datasets [NAME ...]` builds each case in a temporary
directory and runs it through the real CLI (`mmfuse.cli.main(["run", ...])`)
with TensorFlow, TFX and Beam made unimportable, so a case that got past the
validation fails instead of starting a pipeline; it prints one JSON line per
case and then the counts (tried, handled, failed). bad_datasets_test.py runs
it in a subprocess under a memory limit.
"""
import contextlib
import csv
import dataclasses
import io
import json
import os
import struct
import sys
import tempfile
import zlib
from typing import Callable, List, Sequence, Tuple

from PIL import Image

N_ITEMS = 20  # one bad image of 20 is 5%: skipped, not an error
ITEM_LINE = 2 + 3  # line of item i03 in items.csv
INTERACTION_LINE = 2 + 3  # line of the fourth interaction


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[str, str], None]  # (dataset directory, a scratch directory outside it)
    expect: Tuple[str, ...]  # substrings of the error message, or of the report for a skip
    skip: bool = False  # the contract allows a counted skip: the dataset must still read
    overrides: Tuple[str, ...] = ()  # --set KEY=VALUE


def png(width: int = 8, height: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "GIF")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with a few bytes of data:
    decoding it would allocate width*height*3 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def write_base(directory: str) -> None:
    """A good dataset: 20 items with a title, colour and 8x8 PNG, and 30 rated,
    timed interactions of 3 users."""
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    image = png()
    with open(os.path.join(directory, "items.csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "title", "description", "image", "colour"])
        for i in range(N_ITEMS):
            writer.writerow([f"i{i:02d}", f"Item {i}", f"A thing number {i}",
                             f"images/i{i:02d}.png", ("red", "blue")[i % 2]])
            with open(os.path.join(directory, "images", f"i{i:02d}.png"), "wb") as out:
                out.write(image)
    with open(os.path.join(directory, "interactions.csv"), "w", newline="",
              encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "timestamp", "rating"])
        for i in range(30):
            writer.writerow([f"u{i % 3}", f"i{i % N_ITEMS:02d}", 881250949 + i, 3])


# --- helpers that damage the base dataset ------------------------------------------------


def _path(d: str, name: str) -> str:
    return os.path.join(d, name)


def _lines(d: str, name: str) -> List[str]:
    with open(_path(d, name), encoding="utf-8", newline="") as handle:
        return handle.read().splitlines(keepends=True)


def _write_lines(d: str, name: str, lines: Sequence[str]) -> None:
    # surrogateescape: a case may write bytes that are not UTF-8.
    with open(_path(d, name), "w", encoding="utf-8", errors="surrogateescape",
              newline="") as handle:
        handle.write("".join(lines))


def set_line(name: str, line: int, text: str) -> Callable[[str, str], None]:
    def build(d, _):
        lines = _lines(d, name)
        lines[line - 1] = text + "\r\n"
        _write_lines(d, name, lines)
    return build


def set_cell(name: str, line: int, column: str, value: str) -> Callable[[str, str], None]:
    """Sets one cell (quoted as a CSV writer would)."""
    def build(d, _):
        lines = _lines(d, name)
        header = next(csv.reader([lines[0]]))
        row = next(csv.reader([lines[line - 1]]))
        row[header.index(column)] = value
        buffer = io.StringIO()
        csv.writer(buffer).writerow(row)
        lines[line - 1] = buffer.getvalue()
        _write_lines(d, name, lines)
    return build


def write_file(name: str, data: bytes) -> Callable[[str, str], None]:
    def build(d, _):
        with open(_path(d, name), "wb") as handle:
            handle.write(data)
    return build


def keep_lines(name: str, count: int) -> Callable[[str, str], None]:
    def build(d, _):
        _write_lines(d, name, _lines(d, name)[:count])
    return build


def image_file(data: bytes, line: int = ITEM_LINE) -> Callable[[str, str], None]:
    """Replaces the image of the item at `line` of items.csv."""
    def build(d, _):
        row = next(csv.reader([_lines(d, "items.csv")[line - 1]]))
        with open(_path(d, row[3]), "wb") as handle:
            handle.write(data)
    return build


def replace_image(make: Callable[[str, str, str], None]) -> Callable[[str, str], None]:
    """`make(path, dataset, scratch)` puts something else at item i03's image path."""
    def build(d, scratch):
        path = _path(d, "images/i03.png")
        os.remove(path)
        make(path, d, scratch)
    return build


def replace_file(name: str, make: Callable[[str, str, str], None]) -> Callable[[str, str], None]:
    def build(d, scratch):
        os.remove(_path(d, name))
        make(_path(d, name), d, scratch)
    return build


def link_out(path: str, d: str, scratch: str) -> None:
    outside = os.path.join(scratch, "outside.png")
    with open(outside, "wb") as handle:
        handle.write(png())
    os.symlink(outside, path)


def sparse(size: int) -> Callable[[str, str], None]:
    """Item i03's image becomes a `size`-byte sparse file (costs no disk)."""
    def build(d, _):
        with open(_path(d, "images/i03.png"), "r+b") as handle:
            handle.truncate(size)
    return build


def both(*builds: Callable[[str, str], None]) -> Callable[[str, str], None]:
    def build(d, scratch):
        for step in builds:
            step(d, scratch)
    return build


def images_dir_out(d: str, scratch: str) -> None:
    outside = os.path.join(scratch, "images")
    os.rename(_path(d, "images"), outside)
    os.symlink(outside, _path(d, "images"))


def all_images(data: bytes) -> Callable[[str, str], None]:
    def build(d, _):
        for name in os.listdir(_path(d, "images")):
            with open(_path(d, "images/" + name), "wb") as handle:
                handle.write(data)
    return build


I, R = "items.csv", "interactions.csv"
L, IL = f"line {ITEM_LINE}", f"line {INTERACTION_LINE}"
BIG = 10 * 1024 * 1024

CASES: List[Case] = [
    # Structure of the CSV files.
    Case("items: no item_id column", set_line(I, 1, "id,title,description,image,colour"),
         (I, "missing required column", "item_id")),
    Case("interactions: no user_id column", set_line(R, 1, "user,item_id,timestamp,rating"),
         (R, "missing required column", "user_id")),
    Case("items: duplicate column", set_line(I, 1, "item_id,title,title,image,colour"),
         (I, "line 1", "'title' appears twice")),
    Case("interactions: duplicate column", set_line(R, 1, "user_id,item_id,rating,rating"),
         (R, "line 1", "'rating' appears twice")),
    Case("items: unnamed column", set_line(I, 1, "item_id,title,,image,colour"),
         (I, "line 1", "column 3 has no name")),
    Case("items: stray quote never closed", set_line(I, ITEM_LINE, 'i03,"Item 3,x,images/i03.png,red'),
         (I, L, "stray")),
    Case("items: stray quote swallowing rows",
         both(set_line(I, ITEM_LINE, 'i03,"Item 3,x,images/i03.png,red'),
              set_line(I, ITEM_LINE + 3, 'i06,Item 6",x,images/i06.png,red')),
         (I, L, "field title", "stray")),
    Case("items: stray quote, then text after a quote",
         both(set_line(I, ITEM_LINE, 'i03,"Item 3,x,images/i03.png,red'),
              set_line(I, ITEM_LINE + 3, 'i06,Item "6",x,images/i06.png,red')),
         (I, L, "stray", f"at line {ITEM_LINE + 3}")),
    Case("items: stray quote, rows merged into too few fields",
         both(set_line(I, ITEM_LINE, 'i03,"Item 3,x,images/i03.png,red'),
              set_line(I, ITEM_LINE + 3, 'i06,Item 6",images/i06.png,red')),
         (I, L, "4 field(s)", f"runs to line {ITEM_LINE + 3}", "stray")),
    Case("interactions: stray quote", set_line(R, INTERACTION_LINE, 'u0,i03,"881250952,3'),
         (R, IL, "stray")),
    Case("items: an extra field", set_line(I, ITEM_LINE, "i03,Item 3,x,images/i03.png,red,extra"),
         (I, L, "6 field(s)", "header has 5")),
    Case("items: a field short", set_line(I, ITEM_LINE, "i03,Item 3,x,images/i03.png"),
         (I, L, "4 field(s)", "header has 5")),
    Case("interactions: an extra field", set_line(R, INTERACTION_LINE, "u0,i03,881250952,3,5"),
         (R, IL, "5 field(s)", "header has 4")),
    Case("items: not UTF-8", set_line(I, ITEM_LINE, "i03,Caf\udce9,x,images/i03.png,red"),
         (I, L, "not UTF-8")),
    Case("interactions: not UTF-8", write_file(R, b"user_id,item_id\n\xff\xfeu,i01\n"),
         (R, "line 2", "not UTF-8")),
    Case("items: NUL byte", set_line(I, ITEM_LINE, "i03,Item\x003,x,images/i03.png,red"),
         (I, L, "NUL")),
    Case("items: empty file", write_file(I, b""), (I, "missing required column", "item_id")),
    Case("items: header only", keep_lines(I, 1), (I, "no items")),
    Case("items: missing", replace_file(I, lambda *_: None), (I, "file not found")),
    Case("interactions: empty file", write_file(R, b""), (R, "missing required column")),
    Case("interactions: header only", keep_lines(R, 1), (R, "no interactions")),
    # Values.
    Case("items: empty item_id", set_cell(I, ITEM_LINE, "item_id", ""), (I, L, "item_id is empty")),
    Case("items: repeated item_id", set_cell(I, ITEM_LINE, "item_id", "i00"),
         (I, L, "item_id 'i00' repeats line 2")),
    Case("interactions: timestamp in milliseconds",
         set_cell(R, INTERACTION_LINE, "timestamp", "881250952000"),
         (R, IL, "field timestamp", "out of range", "milliseconds")),
    Case("interactions: timestamp in 1800", set_cell(R, INTERACTION_LINE, "timestamp", "1800-01-01"),
         (R, IL, "field timestamp", "out of range")),
    Case("interactions: timestamp in 2300", set_cell(R, INTERACTION_LINE, "timestamp", "10413792000"),
         (R, IL, "field timestamp", "out of range")),
    Case("interactions: timestamp not a time", set_cell(R, INTERACTION_LINE, "timestamp", "yesterday"),
         (R, IL, "field timestamp", "neither")),
    Case("interactions: rating 1e308", set_cell(R, INTERACTION_LINE, "rating", "1e308"),
         (R, IL, "field rating", "32-bit")),
    Case("interactions: rating nan", set_cell(R, INTERACTION_LINE, "rating", "nan"),
         (R, IL, "field rating", "finite")),
    Case("interactions: rating -inf", set_cell(R, INTERACTION_LINE, "rating", "-inf"),
         (R, IL, "field rating", "finite")),
    Case("interactions: rating not a number", set_cell(R, INTERACTION_LINE, "rating", "five"),
         (R, IL, "field rating", "not a number")),
    Case("interactions: unknown item", set_cell(R, INTERACTION_LINE, "item_id", "nope"),
         (R, IL, "item_id 'nope'", "no row in items.csv")),
    Case("interactions: no user and no query", set_cell(R, INTERACTION_LINE, "user_id", ""),
         (R, IL, "field user_id is empty")),
    Case("items: 10 MB title", set_cell(I, ITEM_LINE, "title", "t" * BIG),
         (I, L, "field title", "pipeline.max_text_chars")),
    Case("items: 10 MB description", set_cell(I, ITEM_LINE, "description", "d " * (BIG // 2)),
         (I, L, "field description", "pipeline.max_text_chars")),
    Case("interactions: 10 MB user id", set_cell(R, INTERACTION_LINE, "user_id", "u" * BIG),
         (R, IL, "field user_id", "pipeline.max_text_chars")),
    Case("items: a one-item catalogue", both(keep_lines(I, 2), replace_file(R, lambda *_: None)), (I, "1 item(s)", "pipeline.min_items")),
    Case("config: rating head without ratings", set_line(R, 1, "user_id,item_id,timestamp,score"),
         ("trainer.rating_weight", "has none"), overrides=("trainer.rating_weight=1",)),
    # Image paths and files.
    Case("image: ../../x.png", set_cell(I, ITEM_LINE, "image", "../../x.png"),
         (I, L, "field image '../../x.png'", "leads out")),
    Case("image: absolute path", set_cell(I, ITEM_LINE, "image", "/etc/hostname"),
         (I, L, "field image '/etc/hostname'", "absolute")),
    Case("image: /dev/zero", set_cell(I, ITEM_LINE, "image", "/dev/zero"),
         (I, L, "field image '/dev/zero'", "absolute")),
    Case("image: link to /dev/zero", replace_image(lambda p, *_: os.symlink("/dev/zero", p)),
         (I, L, "field image 'images/i03.png'", "leads out", "/dev/zero")),
    Case("image: link out of the dataset", replace_image(link_out),
         (I, L, "field image 'images/i03.png'", "leads out")),
    Case("image: images/ links out", images_dir_out, (I, "line 2", "field image", "leads out")),
    Case("image: a FIFO", replace_image(lambda p, *_: os.mkfifo(p)),
         (I, L, "field image 'images/i03.png'", "FIFO")),
    Case("image: a directory", replace_image(lambda p, *_: os.mkdir(p)),
         (I, L, "field image 'images/i03.png'", "directory")),
    Case("items.csv: a FIFO", replace_file(I, lambda p, *_: os.mkfifo(p)), (I, "FIFO")),
    Case("items.csv: link to /dev/zero", replace_file(I, lambda p, *_: os.symlink("/dev/zero", p)),
         (I, "leads out", "/dev/zero")),
    Case("interactions.csv: link out", replace_file(R, lambda p, d, s: os.symlink("/etc/hostname", p)),
         (R, "leads out")),
    Case("image: every PNG declares 30000x30000", all_images(png_header(30000, 30000)),
         (I, "20 of 20 images", "900000000 pixels", "pipeline.max_image_pixels")),
    # Skips the contract allows: the dataset reads, the skip is counted and reported.
    Case("image: a PNG declaring 30000x30000", image_file(png_header(30000, 30000)),
         ("images skipped: 1", L, "900000000 pixels"), skip=True),
    Case("image: a PNG declaring 7000x7000", image_file(png_header(7000, 7000)),
         ("images skipped: 1", L, "7000x7000", "pipeline.max_image_pixels"), skip=True),
    Case("image: 25 MB", sparse(25 << 20), ("images skipped: 1", L, "pipeline.max_image_bytes"),
         skip=True),
    Case("image: does not decode", image_file(b"\x89PNG\r\n\x1a\n broken"),
         ("images skipped: 1", L, "does not decode"), skip=True),
    Case("image: missing", replace_image(lambda *_: None), ("images skipped: 1", L), skip=True),
    Case("image: a GIF", image_file(gif()), ("images skipped: 1", L, "not JPEG or PNG"), skip=True),
]

# Cases that would hang (a FIFO) or exhaust memory (/dev/zero, decoding a
# 30000x30000 image) should their check regress: run only in a subprocess
# under a memory limit and a timeout.
GUARDED = frozenset((
    "image: /dev/zero", "image: link to /dev/zero", "image: a FIFO", "items.csv: a FIFO",
    "items.csv: link to /dev/zero", "image: every PNG declares 30000x30000",
    "image: a PNG declaring 30000x30000"))


def build(case: Case, root: str) -> str:
    """Writes the case's dataset under `root`; returns its directory."""
    data, scratch = os.path.join(root, "data"), os.path.join(root, "scratch")
    os.makedirs(scratch, exist_ok=True)
    write_base(data)
    case.build(data, scratch)
    return data


def judge(case: Case, code: int, message: str) -> str:
    """"" if the outcome is what the case expects, else what is wrong."""
    wanted = 0 if case.skip else 2
    if code != wanted:
        return f"exit {code}, expected {wanted}: {message[-500:]}"
    missing = [text for text in case.expect if text not in message]
    return f"message lacks {missing}: {message[-500:]}" if missing else ""


def check(case: Case, root: str) -> str:
    """Runs one case through `mmfuse run`'s validation as the CLI does: an
    error case through `mmfuse.cli.main`, a skip case (which would go on to
    train) through the validation function `mmfuse run` calls."""
    from dataset.contract import DatasetError, validate_for_run
    from mmfuse import cli
    from mmfuse.config import load_config

    data = build(case, root)
    if case.skip:
        try:
            dataset = validate_for_run(data, load_config(None, case.overrides))
        except DatasetError as error:
            return judge(case, 2, str(error))
        return judge(case, 0, dataset.summary())
    stderr = io.StringIO()
    argv = ["run", "--data", data, "--out", os.path.join(root, "out")]
    for override in case.overrides:
        argv += ["--set", override]
    with contextlib.redirect_stderr(stderr):
        code = cli.main(argv)
    if os.path.exists(os.path.join(root, "out")):
        return "the run directory was written before the data was refused"
    return judge(case, code, stderr.getvalue())


class _Unimportable:
    """A meta path finder refusing `names`: TFX must not start on bad data."""

    def __init__(self, names: Sequence[str]):
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ImportError(f"{fullname} imported: the bad dataset got past validation")
        return None


def main(argv: Sequence[str] = ()) -> int:
    sys.meta_path.insert(0, _Unimportable(("tensorflow", "tfx", "apache_beam")))
    chosen = [case for case in CASES if not argv or case.name in argv]
    failed = 0
    for case in chosen:
        with tempfile.TemporaryDirectory() as root:
            try:
                problem = check(case, root)
            except BaseException as error:  # noqa: B036: a crash is a failed case
                problem = f"{type(error).__name__}: {error}"[:500]
        failed += bool(problem)
        print(json.dumps({"case": case.name, "handled": not problem, "problem": problem}), flush=True)
    print(json.dumps({"tried": len(chosen), "handled": len(chosen) - failed, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
