"""The README's "Your own model" example runs as written."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    block = re.search(r"<!-- readme-example -->\n```python\n(.*?)```", text, re.S)
    assert block, "the README lost its example block"
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"__name__": "readme"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(block.group(1), "README.md", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "mynet.tshrink").is_file()
    assert 0.0 <= namespace["accuracy"] <= 1.0
    q, loaded = namespace["q"], namespace["loaded"]
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(q(x), loaded(x), atol=1e-5)
