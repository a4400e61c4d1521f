import io
import logging
import subprocess
import sys
import textwrap

from mmfuse import progress
from mmfuse.progress import Progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _progress(tty):
    stream, clock = io.StringIO(), Clock()
    return Progress(stream, tty=tty, clock=clock, redraw_seconds=0.2), stream, clock


def test_a_pipe_gets_a_line_per_quarter_of_a_bar_not_one_per_unit():
    shown, stream, clock = _progress(tty=False)
    shown.step_started("Transform")
    shown.expect("encode", 200, "encoding")
    for _ in range(200):
        clock.now += 0.5
        shown.advance("encode")
    shown.step_finished("Transform")
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines == [
        "[mmfuse] Transform ...",
        "[mmfuse]   encoding: 25% (50/200), 1:15 left",
        "[mmfuse]   encoding: 50% (100/200), 0:50 left",
        "[mmfuse]   encoding: 75% (150/200), 0:25 left",
        "[mmfuse]   encoding: 100% (200/200), in 1:40",
        "[mmfuse] Transform done in 1:40",
    ]


def test_a_pipe_prints_a_short_bar_only_at_its_end():
    shown, stream, clock = _progress(tty=False)
    shown.expect("encode", 200, "encoding")
    for _ in range(200):
        clock.now += 0.04  # 8 s in all: below PIPE_QUIET_SECONDS
        shown.advance("encode")
    assert stream.getvalue().splitlines() == ["[mmfuse]   encoding: 100% (200/200), in 0:08"]


def test_a_bar_whose_total_was_an_estimate_ends_with_its_step():
    shown, stream, clock = _progress(tty=False)
    shown.step_started("Evaluator")
    shown.expect("rows", 100, "evaluating")
    clock.now = 20
    shown.advance("rows", 30)
    clock.now = 3725
    shown.step_finished("Evaluator")
    shown.advance("rows", 70)  # the bar is gone: nothing more
    assert stream.getvalue().splitlines()[-2:] == [
        "[mmfuse]   evaluating: 30% (30/100), 0:47 left",
        "[mmfuse] Evaluator done in 1:02:05"]


def test_a_terminal_gets_one_bar_redrawn_in_place_at_most_five_times_a_second():
    shown, stream, clock = _progress(tty=True)
    shown.expect("steps", 100, "training")
    for _ in range(100):
        clock.now += 0.01  # 100 units in one second
        shown.advance("steps")
    text = stream.getvalue()
    redraws = text.split("\r\033[K")[1:]
    assert 5 <= len(redraws) <= 8, redraws
    assert redraws[0].startswith("[mmfuse]   training [") and "0/100" in redraws[0]
    assert text.count("\n") == 1 and text.endswith("\n")
    assert "[" + "#" * progress.BAR_WIDTH + "] 100/100 in 0:01\n" in redraws[-1]


def test_a_line_on_a_terminal_clears_the_bar_and_the_bar_comes_back_below_it():
    shown, stream, clock = _progress(tty=True)
    shown.expect("steps", 10, "training")
    clock.now = 1
    shown.advance("steps", 5)
    shown.line("epoch 1 eval: recall@10=0.5")
    text = stream.getvalue()
    before, after = text.split("[mmfuse] epoch 1 eval: recall@10=0.5\n")
    assert before.endswith("\r\033[K") and "5/10 0:01 left" in after
    assert not after.endswith("\n")


def test_module_functions_report_to_the_installed_progress_and_otherwise_do_nothing():
    progress.expect("x", 4, "counting")
    progress.advance("x", 4)  # nothing installed: no error
    shown, stream, _ = _progress(tty=False)
    with progress.install(shown):
        progress.expect("x", 4, "counting")
        progress.advance("x", 4)
        logging.getLogger("mmfuse").info("trained on %d rows", 3)
    logging.getLogger("mmfuse").info("after the run")
    assert stream.getvalue().splitlines() == ["[mmfuse]   counting: 100% (4/4), in 0:00",
                                              "[mmfuse] trained on 3 rows"]


_CHATTER = textwrap.dedent("""
    import os, sys
    from mmfuse import progress
    with progress.logging_to(sys.argv[1], verbose=sys.argv[2] == "1") as terminal:
        print("python print")
        os.write(2, b"native stderr\\n")
        os.system("echo child process")
        terminal.write("progress line\\n")
    print("after")
""")


def _run_chatter(tmp_path, verbose):
    log = tmp_path / "mmfuse.log"
    done = subprocess.run([sys.executable, "-c", _CHATTER, str(log), "1" if verbose else "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done, log.read_text()


def test_logging_to_sends_file_descriptors_1_and_2_to_the_log(tmp_path):
    done, log = _run_chatter(tmp_path, verbose=False)
    assert done.stdout == "progress line\nafter\n" and done.stderr == ""
    assert {"python print", "native stderr", "child process"} <= set(log.splitlines())


def test_logging_to_verbose_also_shows_the_log(tmp_path):
    done, log = _run_chatter(tmp_path, verbose=True)
    assert {"python print", "native stderr", "child process"} <= set(log.splitlines())
    shown = (done.stdout + done.stderr).splitlines()
    assert {"progress line", "python print", "native stderr", "child process", "after"} <= set(shown)


def test_time_left_follows_the_rate_since_counting_began():
    shown, stream, clock = _progress(tty=False)
    shown.expect("rows", 100, "encoding")
    clock.now = 600  # ten minutes of analysis before the first row
    shown.advance("rows", 10)
    clock.now = 610
    shown.advance("rows", 40)  # 40 rows in 10 s: 50 more take 12.5 s
    assert stream.getvalue().splitlines() == ["[mmfuse]   encoding: 50% (50/100), 0:12 left"]


def test_a_step_that_counted_nothing_leaves_no_bar_on_a_terminal():
    shown, stream, _ = _progress(tty=True)
    shown.plan("Transform", "rows", 10, "encoding")
    shown.step_started("Transform")  # its outputs come from the cache
    shown.step_finished("Transform", " (cached)")
    assert stream.getvalue().endswith("\r\033[K[mmfuse] Transform done in 0:00 (cached)\n")
    assert "\n" not in stream.getvalue().split("[mmfuse] Transform ...\n")[1][:-1]
