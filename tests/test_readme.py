"""The README's Python examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_model_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks()
    assert len(blocks) >= 2
    namespace: dict = {}
    exec(blocks[0], namespace)  # noqa: S102 - our own README
    assert namespace["logits"].shape == (1, 2, 388, 388)
    assert namespace["out"].shape == (4, 3, 32, 32)
    exec(blocks[1].replace("num_inference_steps=50", "num_inference_steps=2"), namespace)  # noqa: S102
    assert len(namespace["images"]) == 4
