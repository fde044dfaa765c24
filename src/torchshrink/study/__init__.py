"""The end-to-end study: train, prune, quantize, combine, write files, report; cached and resumable."""

from torchshrink.study.config import StudyConfig, load_config, quick_config
from torchshrink.study.run import StudyInterrupted, run_study

__all__ = ["StudyConfig", "load_config", "quick_config", "run_study", "StudyInterrupted"]
