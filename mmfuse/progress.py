"""What `mmfuse run` shows a person: a line when each step starts and when it
ends (with its duration), a bar with a count and the time left for the long
steps, and mmfuse's own messages. Everything else the libraries print
(TensorFlow, absl, Beam, pip, native C++ logs) goes to a log file
(`logging_to`).

Code that has something to report calls the module functions (`plan`,
`step_started`, `step_finished`, `expect`, `advance`, `finish`) or logs to the
"mmfuse" logger. The functions do nothing unless a run has installed a
`Progress` (`install`), so the same code runs quietly on Kubeflow and in tests.
"""
import contextlib
import logging
import os
import sys
import threading
import time
from typing import Dict, Iterator, List, Optional, TextIO, Tuple

PREFIX = "[mmfuse] "
# A bar on a pipe or a file prints at these shares of its total, no more, and
# only when PIPE_QUIET_SECONDS passed since its last line: a log of a long step
# shows how it goes, a short step prints its end alone.
MILESTONES = (0.25, 0.5, 0.75, 1.0)
PIPE_QUIET_SECONDS = 10.0
BAR_WIDTH = 24


def duration(seconds: float) -> str:
    """0:07, 1:02:03."""
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class _Bar:
    def __init__(self, label: str, total: int, started: float):
        self.label = label
        self.total = max(int(total), 1)
        self.done = 0
        self.started = started
        self.milestone = 0  # MILESTONES already printed
        # The rate is measured from the first count: a step may work a while
        # (tf.Transform's analysis) before counting starts.
        self.first_at, self.first_done = None, 0
        self.drawn_at = float("-inf")


class Progress:
    """Writes progress to `stream`: on a terminal (`tty`) a bar redrawn in
    place with \\r, elsewhere a line at 25/50/75/100% of each bar."""

    def __init__(self, stream: TextIO, tty: Optional[bool] = None, clock=time.monotonic,
                 redraw_seconds: float = 0.2):
        self._stream = stream
        self._tty = _isatty(stream) if tty is None else tty
        self._clock = clock
        self._redraw_seconds = redraw_seconds
        self._lock = threading.RLock()
        self._bars: Dict[str, _Bar] = {}
        self._steps: Dict[str, float] = {}
        self._planned: Dict[str, List[Tuple[str, int, str]]] = {}
        self._bar_on_screen = False  # a tty line without its newline yet

    def line(self, text: str) -> None:
        with self._lock:
            self._clear()
            self._write(PREFIX + text + "\n")
            self._redraw()

    def plan(self, step: str, key: str, total: int, label: str) -> None:
        """Opens the bar `key` (as `expect`) when step `step` starts."""
        if total > 0:
            self._planned.setdefault(step, []).append((key, total, label))

    def step_started(self, name: str) -> None:
        self._steps[name] = self._clock()
        self.line(f"{name} ...")
        for key, total, label in self._planned.pop(name, ()):
            self.expect(key, total, label)

    def step_finished(self, name: str, note: str = "") -> None:
        """Ends `name` and any bar still open (its count was an estimate)."""
        with self._lock:
            for key in list(self._bars):
                self._close(key)
            started = self._steps.pop(name, None)
            took = f" in {duration(self._clock() - started)}" if started is not None else ""
            self.line(f"{name} done{took}{note}")

    def expect(self, key: str, total: int, label: str) -> None:
        """Opens a bar of `total` units; `advance(key)` counts them."""
        with self._lock:
            if key in self._bars:
                self._close(key)
            self._bars[key] = _Bar(label, total, self._clock())
            self._draw(key)

    def advance(self, key: str, units: int = 1) -> None:
        with self._lock:
            bar = self._bars.get(key)
            if bar is None:
                return
            bar.done += units
            if bar.first_at is None:
                bar.first_at, bar.first_done = self._clock(), bar.done
            if bar.done >= bar.total:
                bar.done = bar.total
                self._close(key)
            else:
                self._draw(key)

    def finish(self, key: str) -> None:
        with self._lock:
            if key in self._bars:
                self._close(key)

    # -- drawing; callers hold the lock

    def _text(self, bar: _Bar, now: float) -> str:
        elapsed = now - bar.started
        count = f"{bar.done}/{bar.total}"
        if bar.done >= bar.total:
            when = f"in {duration(elapsed)}"
        elif bar.done > bar.first_done:
            rate = (bar.done - bar.first_done) / max(now - bar.first_at, 1e-9)
            when = f"{duration((bar.total - bar.done) / rate)} left"
        elif bar.done and elapsed > 0:
            when = f"{duration(elapsed * (bar.total - bar.done) / bar.done)} left"
        else:
            when = "time left unknown"
        if self._tty:
            filled = BAR_WIDTH * bar.done // bar.total
            return f"{PREFIX}  {bar.label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {count} {when}"
        return f"{PREFIX}  {bar.label}: {100 * bar.done // bar.total}% ({count}), {when}"

    def _draw(self, key: str, final: bool = False) -> None:
        bar = self._bars[key]
        now = self._clock()
        if self._tty:
            if final or now - bar.drawn_at >= self._redraw_seconds:
                bar.drawn_at = now
                self._write("\r\033[K" + self._text(bar, now) + ("\n" if final else ""))
                self._bar_on_screen = not final
            return
        reached = 0
        while reached < len(MILESTONES) and bar.done >= MILESTONES[reached] * bar.total:
            reached += 1
        if reached > bar.milestone:
            bar.milestone = reached
            if bar.done >= bar.total or now - max(bar.drawn_at, bar.started) >= PIPE_QUIET_SECONDS:
                bar.drawn_at = now
                self._write(self._text(bar, now) + "\n")

    def _close(self, key: str) -> None:
        bar = self._bars[key]
        if self._tty and not bar.done:  # nothing was counted (a cached step): no bar
            self._clear()
        elif self._tty:
            self._draw(key, final=True)
        elif bar.done >= bar.total:
            self._draw(key)
        del self._bars[key]

    def _clear(self) -> None:
        if self._bar_on_screen:
            self._write("\r\033[K")
            self._bar_on_screen = False

    def _redraw(self) -> None:
        if self._tty and self._bars:
            key = next(reversed(self._bars))
            self._bars[key].drawn_at = float("-inf")
            self._draw(key)

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()


class _Lines(logging.Handler):
    """mmfuse's own log messages (the "mmfuse" logger) as progress lines."""

    def __init__(self, progress: Progress):
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record):
        self.progress.line(record.getMessage())


_current: Optional[Progress] = None


@contextlib.contextmanager
def install(progress: Progress) -> Iterator[Progress]:
    """Makes `progress` the one the module functions report to, with the
    "mmfuse" logger's messages as its lines."""
    global _current
    handler = _Lines(progress)
    logger = logging.getLogger("mmfuse")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    propagate, logger.propagate = logger.propagate, False
    previous, _current = _current, progress
    try:
        yield progress
    finally:
        _current = previous
        logger.removeHandler(handler)
        logger.propagate = propagate


def plan(step: str, key: str, total: int, label: str) -> None:
    if _current is not None:
        _current.plan(step, key, total, label)


def step_started(name: str) -> None:
    if _current is not None:
        _current.step_started(name)


def step_finished(name: str, note: str = "") -> None:
    if _current is not None:
        _current.step_finished(name, note)


def expect(key: str, total: int, label: str) -> None:
    if _current is not None:
        _current.expect(key, total, label)


def advance(key: str, units: int = 1) -> None:
    if _current is not None:
        _current.advance(key, units)


def finish(key: str) -> None:
    if _current is not None:
        _current.finish(key)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def logging_to(path: str, verbose: bool = False) -> Iterator[TextIO]:
    """Sends file descriptors 1 and 2, where TensorFlow's native code, absl,
    Beam, pip and Python's own output write, to the log file `path` (with
    `verbose`, to the terminal too). Yields a stream on the original stdout
    for progress lines.

    When sys.stdout is not file descriptor 1 (pytest's capsys), nothing is
    redirected and sys.stdout itself is yielded."""
    try:
        own_stdout = sys.stdout.fileno() == 1
    except (AttributeError, ValueError, OSError):
        own_stdout = False
    if not own_stdout:
        yield sys.stdout
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8")
    log = open(path, "ab", buffering=0)
    copier = None
    try:
        if verbose:
            read_end, write_end = os.pipe()
            copier = threading.Thread(target=_copy, args=(read_end, log, saved[2]), daemon=True)
            copier.start()
            target = write_end
        else:
            target = log.fileno()
        for fd in (1, 2):
            os.dup2(target, fd)
        if verbose:
            os.close(target)
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in (1, 2):
            os.dup2(saved[fd], fd)  # closes the pipe's write end: the copier ends
        if copier is not None:
            copier.join(timeout=10)
        for fd in (1, 2):
            os.close(saved[fd])
        log.close()
        terminal.close()


def _copy(read_end: int, log, terminal_fd: int) -> None:
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        for chunk in iter(lambda: pipe.read(65536), b""):
            log.write(chunk)
            os.write(terminal_fd, chunk)
