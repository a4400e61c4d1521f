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


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the groups
def pytest_collection_modifyitems(config, items):
    """`make test` runs on two pytest-xdist workers (--dist loadgroup). A
    pipeline run keeps about one core of two busy, so the longest chains go
    first and side by side: every test on the sample's run (tests/conftest.py)
    in one group, so that one worker makes the run once, and beside it the
    whole-pipeline runs on real data sets; the rest fill in after them."""
    def chain(item) -> int:
        if "sample_run" in item.fixturenames:
            return 0
        return 1 if item.get_closest_marker("slow") and item.get_closest_marker("real_data") else 2

    for item in items:
        if chain(item) == 0:
            item.add_marker(pytest.mark.xdist_group("sample_run"))
    items.sort(key=chain)  # stable: each chain keeps its order (the sample's run is mutated last)
