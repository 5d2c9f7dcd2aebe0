"""The grid of ranks for model parallelism: tensor x pipeline x data.

World rank r sits at (t, s, d) with r = (d * S + s) * T + t: the T ranks of one tensor group
are neighbours (on one node, where their two Allreduces per block are cheapest), a pipeline
group holds the S stages of one tensor shard, and a data group the D replicas of one
(shard, stage), which alone reduce their gradients together. As in Megatron-LM (Shoeybi et
al. 2019, section 3) and Narayanan et al. 2021.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpidl.errors import ConfigError


@dataclass(frozen=True)
class GridShape:
    tensor: int = 1      # T: ranks that split one layer
    pipeline: int = 1    # S: consecutive stages of the network
    data: int = 1        # D: replicas, each holding the whole (split) model

    @property
    def size(self) -> int:
        return self.tensor * self.pipeline * self.data

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(t, s, d) of a world rank."""
        return rank % self.tensor, (rank // self.tensor) % self.pipeline, rank // (self.tensor * self.pipeline)

    def rank_of(self, t: int, s: int, d: int) -> int:
        return (d * self.pipeline + s) * self.tensor + t


def grid_shape(world_size: int, tensor: int = 1, pipeline: int = 1) -> GridShape:
    """The grid for this many ranks; the data-parallel degree is what T x S leaves. ConfigError
    when T x S does not divide the world."""
    tensor, pipeline = int(tensor), int(pipeline)
    if tensor < 1 or pipeline < 1:
        raise ConfigError(f"--tensor-parallel {tensor} --pipeline-stages {pipeline}: both must be at least 1")
    if world_size % (tensor * pipeline):
        raise ConfigError(f"--tensor-parallel {tensor} x --pipeline-stages {pipeline} = {tensor * pipeline} "
                          f"does not divide the {world_size} ranks; the data-parallel degree is "
                          f"ranks / (T x S), so launch a multiple of {tensor * pipeline} ranks")
    return GridShape(tensor, pipeline, world_size // (tensor * pipeline))


class Grid:
    """This rank's place in the grid and its three groups (each a Communicator):

    - ``tensor``: the T ranks that hold the shards of the same layers (same s, d);
    - ``pipeline``: the S stages of one shard of one replica (same t, d), in stage order;
    - ``data``: the D replicas of this (t, s), among which gradients are averaged;
    - ``model``: the T x S ranks of this replica (same d), which together hold one model.
    """

    def __init__(self, world, tensor: int = 1, pipeline: int = 1):
        self.world = world
        self.shape = grid_shape(world.size, tensor, pipeline)
        T, S = self.shape.tensor, self.shape.pipeline
        self.t, self.s, self.d = self.shape.coords(world.rank)
        if world.size == 1:
            self.tensor = self.pipeline = self.data = self.model = world
            return
        # Every rank takes part in each split, in the same order (MPI_Comm_split is collective).
        self.tensor = world.split(self.s + S * self.d, self.t, "tensor group")
        self.pipeline = world.split(self.t + T * self.d, self.s, "pipeline group")
        self.data = world.split(self.t + T * self.s, self.d, "data group")
        self.model = world.split(self.d, self.t + T * self.s, "model group")

    @property
    def first_stage(self) -> bool:
        return self.s == 0

    @property
    def last_stage(self) -> bool:
        return self.s == self.shape.pipeline - 1

    @property
    def reports(self) -> bool:
        """The one rank of each replica whose loss and evaluation sums count (the last stage's
        first shard); the others contribute zeros to the sums over the world."""
        return self.last_stage and self.t == 0

    def describe(self) -> str:
        T, S, D = self.shape.tensor, self.shape.pipeline, self.shape.data
        return f"grid tensor {T} x pipeline {S} x data {D}"
