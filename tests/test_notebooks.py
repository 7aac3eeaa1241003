"""The diagnostics notebooks run headless, top to bottom, in their tiny default setting."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "examples" / "notebooks"
CELL_TIMEOUT = 120  # seconds per cell; each notebook takes 15-60 s in all on two busy CPU cores


@pytest.mark.parametrize(
    "name, figures",
    [
        ("prior_diagnostics.ipynb", ["transitions.png"]),
        ("posterior_diagnostics.ipynb", ["energy_histograms.png"]),
    ],
)
def test_notebook_runs(name, figures, tmp_path, monkeypatch):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    # Like papermill: override the parameters cell's output directory with a cell right after it.
    position = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(position + 1, nbformat.v4.new_code_cell(f"OUTPUT_DIR = {str(tmp_path)!r}"))
    # The kernel inherits this: the notebooks' tensors are tiny, so extra threads only add contention.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # ... and imports the library of this checkout, as the examples' subprocesses do, whichever is installed.
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    client = NotebookClient(
        notebook, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    for figure in figures:
        assert (tmp_path / figure).stat().st_size > 0
