"""The model card is generated from the committed result files; it must say what they say."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_model_card_is_what_the_result_files_say():
    out = subprocess.run(
        [sys.executable, "tools/model_card.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert (ROOT / "MODEL_CARD.md").read_text() == out, "run: python tools/model_card.py > MODEL_CARD.md"
    assert "non-commercial research only" in out and "Out of scope" in out


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    """Every ```python block of the README runs as written, in a folder holding the files it
    names (photo.jpg, faceattr.onnx)."""
    import re

    from PIL import Image
    from skimage import data as skdata

    from faceattr.cli import main

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    Image.fromarray(skdata.astronaut()).save("photo.jpg")
    assert main(["export", "pretrained", "--onnx", "faceattr.onnx"]) == 0
    capsys.readouterr()
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "female 0.9" in out and "(4, 2) (4, 5) (4,)" in out
