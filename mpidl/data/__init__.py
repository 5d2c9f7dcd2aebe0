"""Dataset readers, sharding across ranks, batching."""

from mpidl.data.datasets import Dataset, load_dataset
from mpidl.data.loader import ShardedSampler, eval_shard

__all__ = ["Dataset", "load_dataset", "ShardedSampler", "eval_shard"]
