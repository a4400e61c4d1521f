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
    """`make test` runs on two pytest-xdist workers. A pipeline run keeps
    about one core of two busy, so the longest chains go first, side by side:
    the tests on the sample's run (tests/conftest.py; each worker that gets one
    makes that run) and the whole-pipeline runs on real data sets; the rest
    fill in after them. (Keeping the sample's tests on one worker, so that its
    run is made once, made that worker the critical path.)"""
    def chain(item) -> int:
        if "sample_run" in item.fixturenames:
            return 0
        return 1 if item.get_closest_marker("slow") and item.get_closest_marker("real_data") else 2

    items.sort(key=chain)  # stable: each chain keeps its order (the sample's run is mutated last)


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
