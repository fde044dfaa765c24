"""Data: the interface every procedure takes (:class:`Task`), in-memory batches, and the Fashion-MNIST adapter."""

from torchshrink.data.fashion_mnist import (
    CLASSES,
    EVAL_BATCH,
    FILES,
    MEAN,
    STD,
    FashionMNIST,
    augment,
    find_data_dir,
    load_fashion_mnist,
    normalize,
    random_erase,
    read_idx,
)
from torchshrink.data.task import (
    DEFAULT_CALIBRATION_SAMPLES,
    Batch,
    Batches,
    LossFn,
    MetricFn,
    Seedable,
    Task,
    as_task,
    calibration_inputs,
    inputs_of,
    take_samples,
    top1_correct,
)
from torchshrink.data.tensors import TensorBatches, Transform

__all__ = [
    # the interface
    "Task",
    "as_task",
    "Batch",
    "Batches",
    "LossFn",
    "MetricFn",
    "Seedable",
    "top1_correct",
    "inputs_of",
    "take_samples",
    "calibration_inputs",
    "DEFAULT_CALIBRATION_SAMPLES",
    # in-memory batches
    "TensorBatches",
    "Transform",
    # Fashion-MNIST
    "FashionMNIST",
    "load_fashion_mnist",
    "find_data_dir",
    "read_idx",
    "normalize",
    "augment",
    "random_erase",
    "FILES",
    "CLASSES",
    "MEAN",
    "STD",
    "EVAL_BATCH",
]
