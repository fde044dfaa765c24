from __future__ import annotations

from torchshrink.study.report import frontier


def test_frontier_keeps_only_files_no_smaller_file_beats():
    points = [(100.0, 93.5), (30.0, 93.1), (40.0, 93.0), (260.0, 93.4), (38.0, 93.2), (38.0, 92.0)]
    assert frontier(points) == [(30.0, 93.1), (38.0, 93.2), (100.0, 93.5)]
    assert frontier([]) == []
