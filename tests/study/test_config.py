from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from torchshrink.errors import ConfigError
from torchshrink.study import StudyConfig, load_config
from torchshrink.study.config import (
    MAX_CONFIG_BYTES,
    BaselineSection,
    CombinedPoint,
    CombinedSection,
    GradualSection,
    quick_config,
)
from torchshrink.study.stages import point_file

LAUGHS = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)  # 300 bytes; printed in full, the value of `i` is 1.4 GB


def test_documented_defaults_match_the_code():
    """docs/study.yaml lists every setting with the value the code uses."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "study.yaml"
    assert load_config(doc) == StudyConfig()


def _load(tmp_path: Path, data: bytes | str) -> StudyConfig:
    path = tmp_path / "study.yaml"
    path.write_bytes(data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data)
    return load_config(path)


@pytest.mark.parametrize(
    "text, message",
    [
        (b"seed: 1\nbaseline: {model: \xff\xfe}\n", "not UTF-8 text \\(byte 26 is 0xff\\); save it as UTF-8"),
        ("seed: " + "[" * 5000 + "]" * 5000, "line 1: nested more than 16 levels deep"),
        ("{1: 2, seed: 0}", "1: unknown key; known: baseline, combined"),
        ("baseline: {2.5: 1, epochs: 1}", "baseline.2.5: unknown key"),
        (LAUGHS + "seed: *i\n", "line 2: YAML aliases \\(\\*name\\) are not accepted"),
        ("seed: &s 3\nbaseline: {epochs: *s}\n", "line 2: YAML aliases"),
        ("seed: 1" + "0" * 5000, "line 1: an integer of 5001 digits is out of range"),
        ("seed: 2001-13-01", "not valid YAML \\(month must be in 1..12\\)"),
        ("baseline: {lr: .inf}", "baseline.lr: expected a finite number, got inf"),
        ("baseline: {ema: 1.0}", "baseline.ema: 1.0 must be in \\[0, 1\\)"),
        ("baseline: {erase: 1.5}", "baseline.erase: 1.5 must be in \\[0, 1\\]"),
        ("gradual: {temperature: .nan}", "gradual.temperature: expected a finite number, got nan"),
        ("quantization: {lr: -.inf}", "quantization.lr: expected a finite number, got -inf"),
        ("seed: 10000000000000000000", "seed: 10000000000000000000 is out of range"),
        ("combined: {points: []}", "combined.points: \\[\\] must hold at least one point"),
        ("structured: {layer_amounts: {features.conv1: 1.0}}",
         "structured.layer_amounts.features.conv1: 1.0 must be in \\[0, 1\\)"),
        ("structured: {layer_amounts: [0.5]}", "structured.layer_amounts: expected a mapping of at most"),
        ("structured: {layer_amounts: {features.conv1: .nan}}", "structured.layer_amounts.features.conv1: expected a"),
        ("structured: {distill: 1.5}", "structured.distill: 1.5 must be in \\[0, 1\\]"),
        ("combined: {points: [{sparsity: 0.4, bits: 8}]}", "combined.points\\[0\\].act_bits: missing"),
        (
            "combined: {points: [{sparsity: 0.4, bits: 8, act_bits: 8, role: teacher}]}",
            "combined.points\\[0\\].role: 'teacher' must be 'student' or empty",
        ),
        (
            "combined: {points: [{sparsity: 0.4, bits: 8, act_bits: 8, role: student},"
            " {sparsity: 0.8, bits: 4, act_bits: 8, role: student}]}",
            "combined.points: \\['\\[0\\]', '\\[1\\]'\\] all have role: student",
        ),
        (
            "combined: {points: [{sparsity: 0.4, bits: 8, act_bits: 8}, {sparsity: 0.4, bits: 8, act_bits: 8}]}",
            "combined.points\\[1\\]: .* repeats combined.points\\[0\\]",
        ),
        (
            "baseline: {model: " + "x" * 5000 + "}",
            "baseline.model: expected a string of at most 200 characters, got 'xxx",
        ),
        (
            "oneshot: {sparsities: [" + ", ".join(["0.5"] * 100) + "]}",
            "oneshot.sparsities: expected a list of at most 64",
        ),
        ("x" * 500 + ": 1", "'xxxxxxxx.*\\.\\.\\.: unknown key"),
        ("seed: !!python/object:os.system x", "not valid YAML"),
        ("continued: {more: [{sparsity: 0.9}]}", "continued.more\\[0\\].sparsity: 0.9 must be above the run before "
         "it \\(0.93\\)"),
        ("continued: {sparsity: null, more: [{sparsity: 0.97}]}", "continued.more: 1 runs need continued.sparsity"),
        ("continued: {more: [{sparsity: 0.97, epochs: 0}]}", "continued.more\\[0\\].epochs: 0 must be at least 1"),
        ("continued: {more: [{epochs: 3}]}", "continued.more\\[0\\].sparsity: missing"),
        ("quantization: {points: [{bits: 2, steps: [2]}]}", "quantization.points\\[0\\].steps: 2 must be wider"),
        ("quantization: {points: [{bits: 2, steps: [4, 8]}]}", "quantization.points\\[0\\].steps: \\[4, 8\\] must be decreasing"),
        ("quantization: {points: [{bits: 2}, {bits: 2, label: again}]}",
         "quantization.points\\[1\\]: 'w2-e8' repeats an earlier point"),
        ("quantization: {points: [{bits: 2, distill: 2}]}", "quantization.points\\[0\\].distill: 2.0 must be in"),
        ("combined: {points: [{sparsity: 0.96, bits: 4, act_bits: 8, source: continued}]}",
         "combined.points\\[0\\].sparsity: 0.96 must be the sparsity of a continued run \\[0.93\\]"),
        ("- 1\n- 2", "config: expected a mapping, got list"),
    ],
)
def test_malformed_config_is_one_short_config_error(tmp_path, text, message):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=f"study.yaml: {message}") as info:
        _load(tmp_path, text)
    # a guard against parses that blow up (minutes, gigabytes), not a speed measure: generous for a busy machine
    assert time.perf_counter() - t0 < 30
    assert "\n" not in str(info.value) and len(str(info.value)) < 600


def test_the_frontier_config_loads_and_chains_its_runs():
    """docs/frontier.yaml: a valid config whose 100x points read the sparsest runs of the continued chain."""
    cfg = load_config(Path(__file__).resolve().parents[2] / "docs" / "frontier.yaml")
    assert cfg.continued.targets() == (0.93, 0.96, 0.97)
    assert {p.sparsity for p in cfg.combined.points if p.source == "continued"} <= set(cfg.continued.targets())
    assert [p.steps for p in cfg.quantization.points if p.bits == 2] == [(4,), (4,)]
    quick = quick_config(cfg)  # --quick keeps every run, at one epoch each
    assert [m.epochs for m in quick.continued.more] == [1, 1]
    assert {p.epochs for p in quick.quantization.points} == {1}


def test_billion_laughs_is_refused_before_anything_is_built(tmp_path):
    """The 300-byte file whose printed value would be 1.4 GB: refused at its first alias."""
    with pytest.raises(ConfigError, match="aliases") as info:
        _load(tmp_path, LAUGHS + "seed: *i\n")
    assert len(str(info.value)) < 300


def test_oversized_file_is_refused_unread(tmp_path):
    with pytest.raises(ConfigError, match="over 1,048,576 bytes"):
        _load(tmp_path, b"#" * (MAX_CONFIG_BYTES + 1))


def test_values_in_messages_are_cut_short(tmp_path):
    with pytest.raises(
        ConfigError, match=r"iterative.targets: expected a list of at most 64 values, got '.{50,}\.\.\.$"
    ):
        _load(tmp_path, "iterative: {targets: " + "y" * 10_000 + "}")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda: {"baseline": BaselineSection(lr=float("inf"))}, "baseline.lr: inf must be a finite number"),
        # the gradual section is the library's GradualConfig: its own check fires when the section is built
        (lambda: {"gradual": GradualSection(lr=float("inf"))}, "lr=inf: must be a finite number"),
        (lambda: {"gradual": GradualSection(temperature=float("inf"))}, "temperature=inf: must be a finite number"),
        (
            lambda: {"combined": CombinedSection(points=(CombinedPoint(float("nan"), 8, 8),))},
            "combined.points\\[0\\].sparsity: nan must be a finite number",
        ),
        (lambda: {"combined": CombinedSection(points=())}, "combined.points: \\[\\] must hold at least one point"),
        (lambda: {"precision": "fp16"}, "precision: 'fp16' is not one of auto, fp32, bf16"),
    ],
)
def test_configs_built_in_python_are_checked_too(change, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(StudyConfig(), **change())


def test_the_student_point_is_named_by_its_role():
    """The report finds the point it compares with the student project by role, not by a word in its label."""
    points = StudyConfig().combined.points
    assert [p.role for p in points] == ["student", "", "", "", ""]
    assert points[0].sparsity == 0.4 and points[0].bits == 8 and points[0].act_bits == 8


def test_a_config_without_a_student_point_still_loads(tmp_path):
    cfg = _load(tmp_path, "combined: {points: [{sparsity: 0.4, bits: 8, act_bits: 8, label: mine}]}")
    assert [p.role for p in cfg.combined.points] == [""]


def test_a_uniform_point_may_have_a_budget(tmp_path):
    """Mixed precision under a file budget is not only for codebooks; the default study runs both at 50x."""
    cfg = _load(tmp_path, "combined: {points: [{sparsity: 0.4, bits: 8, act_bits: 8, budget_bytes: 30000}]}")
    assert cfg.combined.points[0].budget_bytes == 30000 and not cfg.combined.points[0].codebook
    with pytest.raises(ConfigError, match="budget_bytes: 0 must be a positive size"):
        _load(tmp_path, "combined: {points: [{sparsity: 0.4, bits: 8, act_bits: 8, budget_bytes: 0}]}")
    codebook, uniform = StudyConfig().combined.points[2:4]
    assert (uniform.source, uniform.sparsity, uniform.budget_bytes) == (codebook.source, codebook.sparsity, 31_286)
    assert not uniform.codebook and (uniform.bits, uniform.act_bits) == (8, 8)
    assert point_file(uniform) == "continued-s0.93-w8a8-uniform-budget31286.tshrink" != point_file(codebook)
    assert quick_config(StudyConfig()).combined.points == StudyConfig().combined.points  # --quick keeps it


def test_structured_layer_amounts_naming_no_channel_group_are_refused_before_any_work(tmp_path):
    from torchshrink.study import run_study
    from torchshrink.study.config import StructuredSection

    cfg = StudyConfig(structured=StructuredSection(layer_amounts={"features.conv9": 0.5}))
    with pytest.raises(ConfigError, match="structured.layer_amounts of 'cnn': 'features.conv9' is not a prunable "
                       "channel group; its groups are features.conv1, features.conv2, features.conv3"):  # fmt: skip
        run_study(cfg, tmp_path / "study", data_dir=str(tmp_path / "no-data"))
    assert not any((tmp_path / "study").glob("cache/*"))


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_is_bf16_only_where_the_device_computes_it_natively(monkeypatch, native, expected):
    import torch

    import torchshrink.study.run as run

    monkeypatch.setattr(run, "native_bf16", lambda device: native)
    assert StudyConfig().precision == "auto"
    assert run.resolve_precision(StudyConfig(), torch.device("cpu")).precision == expected
    assert run.resolve_precision(StudyConfig(precision="fp32"), torch.device("cpu")).precision == "fp32"
