"""Data: datasets (built-in, IDX, CIFAR-10, your arrays and files), which samples each rank
reads, and the prefetching loader."""

from mpidl.data.base import ArrayDataset, Dataset, as_dataset, infer_task
from mpidl.data.datasets import LOADERS, load_dataset
from mpidl.data.files import FileOptions
from mpidl.data.loader import ShardedSampler, Step, eval_shard

__all__ = ["Dataset", "ArrayDataset", "as_dataset", "infer_task", "LOADERS", "load_dataset", "FileOptions",
           "ShardedSampler", "Step", "eval_shard"]
