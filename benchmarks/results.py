"""benchmarks/RESULTS.md: the latest table of each benchmark, written by the
benchmark that measured it.

Each benchmark owns sections of the file, each between the markers
`<!-- begin NAME -->` and `<!-- end NAME -->`, and replaces only its own
section when it finishes; the file's other text is left as it is. Older
figures live in git's history of the file.

    write_section("benchmarks/RESULTS.md", "serving", render_section(
        "Serving latency", command, [markdown_table(header, rows)]))
"""
import datetime
import os
import platform
import subprocess
import tempfile
from typing import Iterable, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RESULTS = os.path.join(REPO, "benchmarks", "RESULTS.md")
HEADER = ("# Benchmark results\n\nThe latest table of each benchmark, with the command, date, "
          "commit and machine that gave it. The benchmark scripts write their own sections "
          "(`--results FILE`); earlier figures are in this file's git history.\n")


def begin_marker(name: str) -> str:
    return f"<!-- begin {name} -->"


def end_marker(name: str) -> str:
    return f"<!-- end {name} -->"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; `None` cells show as "-", and `|` in a cell is escaped."""
    def cell(value) -> str:
        return "-" if value is None else str(value).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(cell, header)) + " |",
             "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def commit() -> str:
    """The checkout's short commit, "+ local changes" when the work tree differs
    from it; "unknown" outside a git checkout."""
    def git(*args) -> Optional[str]:
        try:
            return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True,
                                  timeout=30, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no")
    return head + (" + local changes" if changed else "")


def machine() -> str:
    """Cores, CPU model and its widest vector extension, memory, system, and
    the load average when asked: how many other jobs shared the cores is part
    of a figure, and hosts of one CPU model name differ in their extensions."""
    model, memory_gb, flags = platform.processor() or platform.machine(), None, set()
    try:
        with open("/proc/cpuinfo") as handle:
            lines = handle.read().splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lines
                      if line.startswith("model name")), model)
        flags = set(next((line.split(":", 1)[1].split() for line in lines
                          if line.startswith("flags")), ()))
        with open("/proc/meminfo") as handle:
            kilobytes = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal"))
            memory_gb = round(kilobytes / 2**20)
    except (OSError, StopIteration, ValueError):
        pass
    extension = vector_extension(flags)
    cpu = f"{model}, {extension}" if extension else model
    memory = f", {memory_gb} GB" if memory_gb else ""
    return (f"{os.cpu_count()} cores ({cpu}){memory}, {platform.system()} "
            f"{platform.machine()}, load average {os.getloadavg()[0]:.1f} at the start")


def vector_extension(flags) -> str:
    """The widest x86 vector extension among /proc/cpuinfo's `flags`. Hosts
    with one CPU model name differ in it, and TensorFlow's matmuls with them:
    serving figures from an AVX2-only host are not comparable with AVX-512's."""
    if "avx512_bf16" in flags:
        return "AVX-512 with BF16"
    if "avx512f" in flags:
        return "AVX-512"
    return "AVX2" if "avx2" in flags else ""


def today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def render_section(title: str, command: str, tables: Sequence[str], *, measured: str,
                   notes: Sequence[str] = ()) -> str:
    """A section's text: a heading, when and where (`measured`, from
    `measured_line`), the command that reproduces it, the tables, notes."""
    parts: List[str] = [f"## {title}", measured, f"```sh\n{command}\n```", *tables, *notes]
    return "\n\n".join(part.strip() for part in parts if part.strip()) + "\n"


def measured_line(date: str, commit_: str, machine_: str, wall_s: Optional[float] = None) -> str:
    took = f" It took {duration(wall_s)}." if wall_s is not None else ""
    return f"Measured on {date} at commit {commit_}, on {machine_}.{took}"


def write_section(path: str, name: str, text: str) -> None:
    """Replaces section `name` of the Markdown file at `path` with `text`
    (appended when the file has no such section; the file is created if
    missing). The file is replaced whole at once, so a reader never sees half."""
    begin, end = begin_marker(name), end_marker(name)
    block = f"{begin}\n{text.rstrip()}\n{end}"
    try:
        with open(path, encoding="utf-8") as handle:
            document = handle.read()
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        document, mode = HEADER, 0o644
    start = document.find(begin)
    if start < 0:
        document = document.rstrip("\n") + "\n\n" + block + "\n"
    else:
        stop = document.find(end, start)
        if stop < 0:
            raise ValueError(f"{path}: {begin} has no {end} after it; fix the file by hand")
        document = document[:start] + block + document[stop + len(end):]
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=directory, delete=False,
                                     suffix=".tmp") as handle:
        handle.write(document)
    os.chmod(handle.name, mode)
    os.replace(handle.name, path)

