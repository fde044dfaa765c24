import copy

import pytest
import torch

from torchshrink.data import Task
from torchshrink.errors import ConfigError
from torchshrink.models import build_model
from torchshrink.pack import encode_compressed
from torchshrink.pruning import make_permanent, prune_
from torchshrink.pruning.config import PruneConfig
from torchshrink.quant import QuantConfig, snap_floats_
from torchshrink.recipes import CodebookConfig, GradualConfig, IterativeConfig, TrainConfig, codebook, ptq
from torchshrink.recipes.compress import CompressConfig, smallest_file_bytes


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: CompressConfig(finetune=TrainConfig(temperature=0.0)), "temperature=0.0: must be positive"),
        (lambda: CompressConfig(quant=QuantConfig(keep_first_last_8bit=True), budget_bytes=30_000),
         "keep_first_last_8bit with a size budget"),
        (lambda: CompressConfig(codebook=True, budget_bytes=0), "must be positive"),
        (lambda: CompressConfig(budget_bytes=0), "budget_bytes=0: must be positive"),
        (lambda: CompressConfig(act_budget_bytes=0), "act_budget_bytes=0: must be positive"),
        (lambda: CompressConfig(codebook=True, act_budget_bytes=1000), "act_budget_bytes chooses the input widths"),
        (lambda: CompressConfig(prune=IterativeConfig(0.5, steps=0)), "steps=0"),
        (lambda: CompressConfig(prune=0.5), "give an IterativeConfig, a GradualConfig or None"),
        (lambda: CompressConfig(prune=GradualConfig(1.0)), "sparsity"),
        (lambda: IterativeConfig({"fc": 0.5}, scope="layer"), "one fraction for the whole model"),
        (lambda: GradualConfig("0.9"), "one fraction for the whole model"),
        (lambda: IterativeConfig(0.5, initial=0.7), "initial=0.7: the schedule starts at or below its target"),
        (lambda: CompressConfig(quant=QuantConfig(bits=9)), "9"),
        (lambda: CompressConfig(quant=8), "give a QuantConfig"),
        (lambda: CompressConfig(finetune=TrainConfig(precision="fp16")), "precision='fp16': choose one of fp32, bf16"),
    ],
)
def test_impossible_settings_are_refused_when_the_config_is_made(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_the_pipeline_holds_the_library_configs_rather_than_copies_of_their_fields():
    """The defaults of the pipeline are those of the recipes it runs: one place for each."""
    from torchshrink.recipes.quantize import FINETUNE

    cfg = CompressConfig(prune=GradualConfig(0.9))
    assert cfg.finetune is FINETUNE and cfg.quant == QuantConfig() and cfg.sparsity == 0.9
    assert cfg.prune.train.temperature == TrainConfig().temperature
    record = cfg.to_dict()
    assert record["prune"]["method"] == "gradual" and record["prune"]["train"]["epochs"] == cfg.prune.train.epochs
    assert CompressConfig().to_dict()["prune"] is None and CompressConfig().sparsity == 0.0


def test_the_fine_tuning_distils_from_the_base_model_with_the_configured_training(monkeypatch):
    import torchshrink.recipes.compress as compress
    from torchshrink.models import build_model

    seen = {}

    class Captured(Exception):
        pass

    def fake_qat(model, data, qcfg, *, train, teacher=None, **_):
        seen.update(train=train, teacher=teacher)
        raise Captured

    monkeypatch.setattr(compress, "qat", fake_qat)
    base = build_model("cnn_tiny")
    finetune = TrainConfig(epochs=1, lr=0.01, distill=0.7, temperature=3.0, precision="bf16")
    with pytest.raises(Captured):
        compress.compress_model(base, None, CompressConfig(quant=QuantConfig(bits=4), finetune=finetune), log=None,
                                pruned=build_model("cnn_tiny"))  # fmt: skip
    assert seen["train"] is finetune and seen["teacher"] is base
    seen.clear()
    with pytest.raises(Captured):  # no distillation anywhere: no teacher
        compress.compress_model(base, None, CompressConfig(), log=None, pruned=build_model("cnn_tiny"))
    assert seen["teacher"] is None


def _real_file_bytes(model, sparsity: float, bits: int, shared: bool, compression: str, name: str) -> int:
    """The size of the file of ``model`` magnitude-pruned to ``sparsity`` and quantized at ``bits``."""
    pruned = copy.deepcopy(model)
    if sparsity:
        prune_(pruned, PruneConfig(sparsity))
        make_permanent(pruned)
    calibration = Task(calibration=[torch.randn(16, 1, 28, 28)])
    if shared:
        q = codebook(pruned, calibration, CodebookConfig(bits, act_bits=bits), train=None, log=None).model
    else:
        q = ptq(pruned, calibration, QuantConfig(bits=bits)).model
    snap_floats_(q)
    return len(encode_compressed(q, name, model.arguments(), compression)[0])


@pytest.mark.filterwarnings("ignore:prune_ left:UserWarning")  # 99% pruned: layers emptied on purpose
@pytest.mark.parametrize("shared", [False, True], ids=["uniform", "codebook"])
@pytest.mark.parametrize("compression", ["auto", "none"])
def test_no_file_is_smaller_than_the_smallest_file_bound(shared, compression):
    """Against real files of the tiniest content: 99% pruned at 2 bits, all-zero weights, and dense 8-bit ones."""
    torch.manual_seed(0)
    model = build_model("cnn_tiny")
    config = CompressConfig(quant=QuantConfig(bits=8), codebook=shared)
    state = torch.random.get_rng_state()
    floor = smallest_file_bytes(model, config, "cnn_tiny", model.arguments(), compression)
    assert torch.equal(torch.random.get_rng_state(), state)  # a probe: the run's random stream does not move
    assert 300 < floor < 1000
    sizes = [_real_file_bytes(model, s, b, shared, compression, "cnn_tiny") for s, b in ((0.99, 2), (0.0, 8))]
    zeros = build_model("cnn_tiny")
    with torch.no_grad():
        for p in zeros.parameters():
            p.zero_()
    sizes.append(_real_file_bytes(zeros, 0.0, 2, shared, compression, "cnn_tiny"))
    assert min(sizes) >= floor, (sizes, floor)


def test_a_budget_below_the_smallest_file_is_refused_before_pruning(monkeypatch):
    import torchshrink.recipes.compress as compress

    def no_work(*_args, **_kwargs):
        raise AssertionError("the pruning started: the budget should have been refused before it")

    monkeypatch.setattr(compress, "iterative_prune", no_work)
    base = build_model("cnn_tiny")
    floor = compress.smallest_file_bytes(base, CompressConfig(), "cnn_tiny", base.arguments())
    config = CompressConfig(prune=IterativeConfig(0.9), quant=QuantConfig(bits=4), budget_bytes=floor - 1)
    with pytest.raises(ConfigError, match=f"^budget_bytes={floor - 1:,}: .*at least {floor:,} bytes"):
        compress.compress_model(base, None, config, log=None, model_name="cnn_tiny", model_args=base.arguments())
