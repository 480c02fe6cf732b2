"""The examples run end to end (with fewer epochs than their defaults)."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name",
    [
        "folder_to_deployed_model", "pipeline_from_paths", "nfa_masks", "grid_search_normal_only",
        "dask_tuning_and_scoring",
    ],
)
def test_example_runs(name, capsys):
    if name == "dask_tuning_and_scoring":
        pytest.importorskip("distributed")
    module = _load(name)
    kwargs = {"argv": []} if name == "folder_to_deployed_model" else {}
    assert module.main(epochs=1, **kwargs) == 0
    assert capsys.readouterr().out.strip()


def test_demo_runs_and_writes_the_figure(tmp_path, capsys, monkeypatch):
    module = _load("demo")
    output = tmp_path / "demo.png"
    assert module.main(["--output", str(output), "--epochs", "1", "--n-train", "40"]) == 0
    out = capsys.readouterr().out
    assert "image AUROC" in out and "pixel AUROC" in out and output.stat().st_size > 10_000
