"""Documentation checks: the API page is current and the user guide's examples run.

Runnable blocks of docs/user_guide.md are those fenced with ```python that do
not contain ``# doctest: +SKIP``; they run in order in one namespace (the
convention is stated at the top of the guide).
"""

import importlib.util
import re
from pathlib import Path

import pytest

import skflow_ad

DOCS = Path(__file__).resolve().parent.parent / "docs"
SKIP_MARKER = "# doctest: +SKIP"


def _build_api_module():
    spec = importlib.util.spec_from_file_location("build_api", DOCS / "build_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runnable_blocks(text):
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    return [b for b in blocks if SKIP_MARKER not in b]


def test_api_md_is_up_to_date():
    expected = _build_api_module().build()
    assert (DOCS / "api.md").read_text(encoding="utf-8") == expected, (
        "docs/api.md is out of date: run python docs/build_api.py"
    )


@pytest.mark.parametrize("page", ["api.md", "user_guide.md"])
def test_public_names_are_documented(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    missing = [name for name in skflow_ad.__all__ if name not in text]
    assert not missing, f"{page} does not mention {missing}"


def test_user_guide_has_runnable_blocks():
    text = (DOCS / "user_guide.md").read_text(encoding="utf-8")
    assert len(_runnable_blocks(text)) >= 5


def test_user_guide_examples_run(tmp_path, monkeypatch, one_torch_thread):
    pytest.importorskip("matplotlib")
    pytest.importorskip("dask.array")
    monkeypatch.chdir(tmp_path)
    text = (DOCS / "user_guide.md").read_text(encoding="utf-8")
    namespace = {"__name__": "user_guide"}
    try:
        for i, block in enumerate(_runnable_blocks(text)):
            try:
                exec(compile(block, f"user_guide.md:block{i}", "exec"), namespace)
            except Exception as exc:  # pragma: no cover - reported with the block
                raise AssertionError(f"user guide block {i} failed:\n{block}") from exc
    finally:
        if "matplotlib.pyplot" in __import__("sys").modules:
            __import__("matplotlib.pyplot").pyplot.close("all")


def test_parameters_fixed_at_fit_are_not_called_prediction_parameters():
    # CS-Flow's map_mode is fixed at fit (tests/test_csflow.py checks that set_params leaves the maps
    # alone): the guide must not list it, nor the other fit-time parameters, as read when predicting.
    text = " ".join((DOCS / "user_guide.md").read_text(encoding="utf-8").split())
    sentences = re.findall(r"[^.]*read (?:when|at) predict(?:ing|ion time)[^.]*\.", text)
    assert sentences
    for sentence in sentences:
        for name in ("map_mode", "contamination", "pixel_quantile"):
            if f"`{name}`" in sentence:
                assert "fixed at fit" in sentence or "next `fit`" in sentence, sentence


#: Modules whose docstring examples still skip lines, each waiting to be made runnable (tiny images,
#: max_epochs=1). The test fails on new ones and on stale entries.
SKIPPED_EXAMPLES = {"uflow.py"}


def test_docstring_examples_run_instead_of_being_skipped():
    # pytest runs the package's docstring examples (--doctest-modules, testpaths in pyproject.toml);
    # a skipped line is an example nobody checks.
    package = Path(skflow_ad.__file__).parent
    skipping = {
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if SKIP_MARKER in path.read_text(encoding="utf-8")
    }
    assert skipping - SKIPPED_EXAMPLES == set(), "make these examples runnable"
    assert SKIPPED_EXAMPLES - skipping == set(), "these run now: remove them from SKIPPED_EXAMPLES"
