from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

from torchshrink.errors import ConfigError
from torchshrink.models import build_model
from torchshrink.pack import encode_compressed, load_compressed, read_compressed, save_compressed
from torchshrink.pruning import make_permanent, prune_
from torchshrink.pruning.config import PruneConfig
from torchshrink.recipes import (
    LayerWidth,
    MixedPlan,
    TrainConfig,
    allocate_bits,
    codebook,
    evaluate,
    fit,
    fit_plan_to_file,
    plan_mixed_precision,
)
from torchshrink.recipes.quantize import CodebookConfig


def _rows(layer, widths):
    """``{bits: (val accuracy, bytes, val loss)}`` -> table rows."""
    return [LayerWidth(layer, b, acc, size, loss) for b, (acc, size, loss) in widths.items()]


def test_allocation_narrows_the_layer_that_loses_least():
    table = _rows("robust", {2: (0.90, 100, 0.3), 4: (0.90, 200, 0.3)})
    table += _rows("fragile", {2: (0.50, 100, 1.0), 4: (0.90, 200, 0.3)})
    # one narrowing fits 350 bytes: the robust layer loses nothing for the same 100 bytes
    assert allocate_bits(table, budget=350, fixed=50) == {"robust": 2, "fragile": 4}
    assert allocate_bits(table, budget=500, fixed=50) == {"robust": 4, "fragile": 4}  # fits already
    assert allocate_bits(table, budget=250, fixed=50) == {"robust": 2, "fragile": 2}
    with pytest.raises(ConfigError, match="narrowest"):
        allocate_bits(table, budget=249, fixed=50)


def test_allocation_is_the_best_combination_not_a_greedy_path():
    # a greedy narrowing takes b first (the least loss per byte), then still has to narrow a: b's narrowing
    # was wasted. Narrowing a alone fits and loses less.
    table = _rows("a", {2: (0, 100, 0.60), 4: (0, 400, 0.30)}) + _rows("b", {2: (0, 100, 0.31), 4: (0, 150, 0.30)})
    assert allocate_bits(table, budget=250, fixed=0) == {"a": 2, "b": 4}
    rng = np.random.default_rng(0)
    for _ in range(50):  # against brute force on random tables
        table = [LayerWidth(f"l{i}", w, 0.0, int(rng.integers(50, 500)) * w, float(rng.random()) / w)
                 for i in range(4) for w in (2, 3, 4)]  # fmt: skip
        budget = int(rng.integers(1200, 5000))
        rows = {(r.layer, r.bits): r for r in table}
        combos = [dict(zip([f"l{i}" for i in range(4)], ws, strict=True))
                  for ws in itertools.product((2, 3, 4), repeat=4)]  # fmt: skip
        fits = [c for c in combos if sum(rows[(n, w)].bytes for n, w in c.items()) <= budget]
        if not fits:
            continue
        optimum = min(sum(rows[(n, w)].val_loss for n, w in c.items()) for c in fits)
        chosen = allocate_bits(table, budget, fixed=0)
        assert sum(rows[(n, w)].bytes for n, w in chosen.items()) <= budget
        assert sum(rows[(n, w)].val_loss for n, w in chosen.items()) <= optimum + 1e-9 + 0.01


def test_fitting_to_the_real_file_spends_an_overestimated_header_and_recovers_from_an_underestimate():
    table = _rows("robust", {2: (0.90, 100, 0.3), 4: (0.90, 200, 0.3)})
    table += _rows("fragile", {2: (0.50, 100, 1.0), 4: (0.90, 200, 0.3)})

    def plan_with(bits, fixed):
        return MixedPlan(bits, 400, fixed + sum(200 if b == 4 else 100 for b in bits.values()), fixed, 0.9, 0.0, table)

    def real_file(bits):  # the true fixed part is 40 bytes
        return 40 + sum(200 if b == 4 else 100 for b in bits.values())

    high = fit_plan_to_file(plan_with({"robust": 2, "fragile": 2}, fixed=250), real_file, margin=10, log=None)
    assert high.bits == {"robust": 2, "fragile": 4}  # the fragile layer is the one worth widening
    assert high.estimated_bytes == real_file(high.bits) == 340 and high.fixed_bytes == 40
    low = fit_plan_to_file(plan_with({"robust": 4, "fragile": 4}, fixed=0), real_file, margin=10, log=None)
    assert low.bits == {"robust": 2, "fragile": 4} and low.estimated_bytes <= 400


def test_plan_fits_the_budget_and_the_file_uses_the_chosen_widths(small, small_task, tmp_path):
    torch.manual_seed(0)
    model = build_model("cnn_tiny")
    fit(model, small_task, TrainConfig(epochs=2, lr=0.05), progress=False, log=None)
    prune_(model, PruneConfig(0.5))
    make_permanent(model)
    wide = plan_mixed_precision(copy.deepcopy(model), small_task, budget_bytes=10**6, candidates=(2, 4), progress=False,
                                log=None)  # fmt: skip
    assert set(wide.bits.values()) == {4}  # a generous budget keeps every layer at its widest width
    budget = (wide.estimated_bytes + wide.fixed_bytes) // 2 + 300
    plan = plan_mixed_precision(model, small_task, budget_bytes=budget, candidates=(2, 4), progress=False, log=None)
    assert plan.estimated_bytes <= budget and 2 in plan.bits.values()
    q = codebook(model, small_task, CodebookConfig(plan.bits, act_bits=8), log=None, train=None).model
    path = tmp_path / "mixed.tshrink"
    header = save_compressed(q, path, "cnn_tiny")
    stored = {t["name"].rsplit(".", 1)[0]: t["bits"] for t in header["tensors"] if t["encoding"] == "codebook"}
    assert stored == plan.bits
    assert abs(path.stat().st_size - plan.estimated_bytes) < 0.25 * plan.estimated_bytes  # the estimate is close
    acc, _ = evaluate(load_compressed(path), small.test_batches())
    assert acc > 0.5
    read_compressed(path)

    def file_bytes(bits):
        return len(encode_compressed(codebook(model, small_task, CodebookConfig(bits, act_bits=8), log=None, train=None).model, "cnn_tiny")[0])

    fitted = fit_plan_to_file(plan, file_bytes, log=None)
    assert fitted.estimated_bytes == file_bytes(fitted.bits) <= budget  # measured, not estimated
