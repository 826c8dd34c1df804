"""The README's Python API example runs as written (a runnable example a test executes)."""

import re
import runpy
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow  # make test-all (see Makefile)
def test_the_python_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text[text.index("## Python API"):]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(block)
    monkeypatch.chdir(tmp_path)  # the example reads no file of the repository
    namespace = runpy.run_path(str(script))
    printed = capsys.readouterr().out
    assert re.match(r"loss [\d.]+ -> [\d.]+; test auc 0\.\d+; user \S+: items \[", printed)
    history = namespace["history"]
    assert history["loss"].shape == (3, 20)
    assert float(history["loss"][0, -1]) < float(history["loss"][0, 0]) / 5
    assert namespace["result"]["auc"] > 0.55
    top5 = namespace["top5"]
    seen = namespace["seen"]
    assert top5.shape == (namespace["n_users"], 5)
    assert not seen[0, top5[0]].any()  # recommendations exclude what the user has
