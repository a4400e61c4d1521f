"""Every test process runs TensorFlow with Keras 2 (TFRS needs tf.keras to be
Keras 2), finds the real data sets through MMFUSE_DATA_DIR, and has a home
directory of its own: no test reads or writes the user's files (the default
user key ~/.config/mmfuse/user_key among them), so none depends on what an
earlier test or `make run` left there."""
import os
import tempfile

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["HOME"] = tempfile.mkdtemp(prefix="mmfuse-test-home-")


def pytest_collection_modifyitems(config, items):
    """`make test` runs on two pytest-xdist workers, which take the tests one
    at a time in this order. A pipeline run keeps about one core of two busy,
    so the longest chains start at once, side by side: the whole-pipeline
    runs on real data on one worker, the sample's run (made once, for both
    workers: tests/conftest.py) and the next-day runs on it on the other;
    the rest of the sample's tests, the other slow tests and the unit tests
    fill in after them."""
    def chain(item) -> int:
        if item.get_closest_marker("slow") and item.get_closest_marker("real_data"):
            return 0
        if "sample_run" in item.fixturenames:
            return 1 if item.module.__name__ == "tests.serving_e2e_test" else 2
        return 3 if item.get_closest_marker("slow") else 4

    items.sort(key=chain)  # stable: each chain keeps its order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Hands the tests out one at a time, in the order above, as workers free
    up. xdist's default sends a quarter of them round robin up front, which
    queued the MovieLens run behind half of the sample's tests."""
    from xdist.scheduler import LoadScopeScheduling

    class InOrder(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return nodeid

    return InOrder(config, log)
