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

# The files whose tests use the sample's run (tests/conftest.py `sample_run`).
# Under pytest-xdist they all go to one worker, so the run is made once; the
# xdist scheduler sees test ids only, not fixtures, hence the list.
SAMPLE_RUN_FILES = frozenset(f"tests/{name}_test.py" for name in (
    "evaluation_e2e", "live", "pipeline_e2e", "readme", "report_e2e", "serving_e2e"))


def pytest_collection_modifyitems(config, items):
    """`make test` runs on two pytest-xdist workers. A pipeline run keeps
    about one core of two busy, so the longest chains go first, side by side:
    the tests on the sample's run and the whole-pipeline runs on real data
    sets; the rest fill in after them."""
    unlisted = sorted({item.nodeid.split("::")[0] for item in items
                       if "sample_run" in item.fixturenames} - SAMPLE_RUN_FILES)
    if unlisted:
        raise pytest.UsageError(f"{', '.join(unlisted)} use sample_run: add them to "
                                "SAMPLE_RUN_FILES in conftest.py")

    def chain(item) -> int:
        if item.nodeid.split("::")[0] in SAMPLE_RUN_FILES:
            return 0
        return 1 if item.get_closest_marker("slow") and item.get_closest_marker("real_data") else 2

    items.sort(key=chain)  # stable: each chain keeps its order (the sample's run is mutated last)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's scope scheduling with one scope for the sample's files and one
    per test elsewhere, so the other worker takes tests one at a time."""
    from xdist.scheduler import LoadScopeScheduling

    class SampleRunOnOneWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return "sample run" if nodeid.split("::")[0] in SAMPLE_RUN_FILES else nodeid

    return SampleRunOnOneWorker(config, log)
