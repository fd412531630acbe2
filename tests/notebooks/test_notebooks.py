"""Every notebook runs as a plain script at tiny scale, into a temporary figures directory, and its
assertions hold (a notebook that fails fails the suite)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[2] / "notebooks").glob("[0-9][0-9]_*.py"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebooks")
    # one cache for the module: notebooks of a scale share (and resume) one study
    return {**os.environ, "LORA_DROPOUT_SCALE": "tiny", "LORA_DROPOUT_CACHE": str(root / "cache"),
            "LORA_DROPOUT_FIGURES": str(root / "figures"), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def test_there_are_eight_notebooks():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07", "08"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_tiny_scale(notebook, env):
    proc = subprocess.run([sys.executable, str(notebook)], env=env, capture_output=True, text=True,
                          cwd=notebook.parents[1], timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = list(Path(env["LORA_DROPOUT_FIGURES"]).glob(f"{notebook.stem[:2]}_*.png"))
    assert figures, f"{notebook.name} saved no figure"


def test_notebooks_are_jupytext_percent_scripts_with_a_parameters_cell():
    for notebook in NOTEBOOKS:
        text = notebook.read_text()
        assert text.startswith("# %% [markdown]\n# # "), notebook.name  # opens with the claim
        assert '# %% tags=["parameters"]' in text and "scale_from_env()" in text, notebook.name
        assert "\nassert " in text, f"{notebook.name} asserts nothing"
