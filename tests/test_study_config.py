from pathlib import Path

from torchshrink.study import StudyConfig, load_config


def test_documented_defaults_match_the_code():
    """docs/study.yaml lists every setting with the value the code uses."""
    doc = Path(__file__).resolve().parents[1] / "docs" / "study.yaml"
    assert load_config(doc) == StudyConfig()
