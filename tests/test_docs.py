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
