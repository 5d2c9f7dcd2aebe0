"""ShardedModel: this rank's part of a model split by tensor and pipeline parallelism.

    grid = mpidl.parallel.Grid(comm, tensor=2, pipeline=2)     # 8 ranks: data-parallel degree 2
    model = mpidl.parallel.ShardedModel(mpidl.Model(net, "cross_entropy", allocate=False), grid)

It stands where a Model stands (the Trainer and DistributedOptimizer take either): its flat
buffers hold only this rank's shard of this rank's stage; ``loss_and_backward`` runs the
pipeline schedule; the loss and evaluation sums count on one rank per replica (``grid.reports``)
and are zero on the others, so a sum over the world counts each replica once.

Initial weights equal the single-process model's: the parameters are drawn in the whole
model's order from the same generator, one whole parameter at a time, and each rank keeps its
slice (no rank ever holds the whole model). Checkpoints and exported weights are in the whole
model's layout (:meth:`gather_whole`, :meth:`scatter_whole`), so they do not depend on the grid.
"""

from __future__ import annotations

import numpy as np

from mpidl.errors import ConfigError
from mpidl.nn.base import Sequential
from mpidl.params import ParamStore
from mpidl.parallel.pipeline import (BACKWARD_TAG, FORWARD_TAG, Link, restore_state, save_state, schedule_ops,
                                     stage_layers)
from mpidl.parallel.tensor import split_for_tensor_parallel


class ShardedModel:
    def __init__(self, model, grid, *, schedule: str = "1f1b", micro_batches: int | None = None):
        from mpidl.models.base import _first_parameterised
        T, S = grid.shape.tensor, grid.shape.pipeline
        self.grid, self.T, self.S = grid, T, S
        self.schedule = schedule
        self.micro_batches = int(micro_batches or 2 * S)
        schedule_ops(schedule, 0, S, 1)  # refuses an unknown name
        if S > 1 and model.objective is not None:
            raise ConfigError(f"--pipeline-stages {S}: model {model.name} has a multi-term objective, which "
                              "needs the whole network on one rank; use --tensor-parallel instead")
        for key in ("task", "name", "recipe", "loss_name", "loss_fn", "objective", "term_names", "seed"):
            setattr(self, key, getattr(model, key))
        self.finish = None  # a built-in model's extra picture needs the whole network on rank 0
        self.loss_scale = 1.0
        whole, net = model.store.params, model.net
        allocated = model.store.data is not None
        values = {id(p): p.data for p in whole} if allocated else None  # views into the whole buffer
        for p in whole:
            p.data = p.grad = None  # the parameters move to this rank's buffers
        costs = [sum(p.size for p in layer.parameters()) + 1 for layer in net.layers] if S > 1 else None
        if T > 1 and split_for_tensor_parallel(net, grid.tensor, T, grid.t) == 0:
            raise ConfigError(f"--tensor-parallel {T}: model {model.name} has no pair of dense layers and no "
                              "attention layer to split (convolutions are not split)")
        if S > 1:
            stages = stage_layers(net, S, costs)
            self.stage_starts = [names[0] for names in ([net.names[i] for i in s] for s in stages)]
            stage_of = {}
            for k, indices in enumerate(stages):
                for i in indices:
                    for p in net.layers[i].parameters():
                        stage_of[id(getattr(p, "source", p))] = k
            local = Sequential({net.names[i]: net.layers[i] for i in stages[grid.s]})
        else:
            self.stage_starts, stage_of, local = [], {}, net
        self.net = local
        self.store = ParamStore(local)
        self.store.allocate(model.dtype, initialise=False)
        splits = {id(getattr(p, "source", p)): getattr(p, "split", None) for p in net.parameters()}
        # The whole model's parameters in flat order: (name, shape, offset, stage, split).
        self.whole, offset = [], 0
        for p in whole:
            self.whole.append((p.name, p.shape, offset, stage_of.get(id(p), 0), splits.get(id(p))))
            offset += p.size
        self.whole_size = offset
        self._fill(whole, values, np.random.default_rng(model.seed))
        # Only the network's first layer may skip its input gradient: a later stage sends it back.
        first = _first_parameterised(local)
        if first is not None and hasattr(first, "need_input_grad"):
            first.need_input_grad = not grid.first_stage
        self._modules = local.modules()
        self.link = Link(grid.pipeline, model.dtype) if S > 1 else None

    def _fill(self, whole, values, rng) -> None:
        """Each parameter's initial value (drawn whole, in the whole model's order, so the
        generator's sequence is the single process's), sliced to this rank's shard."""
        mine = {id(getattr(p, "source", p)): p for p in self.store.params}
        names = [name for name, _, _, stage, _ in self.whole if stage == self.grid.s]
        if names != [p.name for p in self.store.params]:
            raise RuntimeError("sharded parameters are not in the whole model's order")
        for p in whole:
            value = values[id(p)] if values is not None else p.init(rng, p.shape)
            shard = mine.get(id(p))
            if shard is not None:
                split = getattr(shard, "split", None)
                shard.data[...] = value if split is None else split.take(np.asarray(value), self.grid.t, self.T)

    # -- the Model interface ---------------------------------------------------------
    def attach(self, rng, comm) -> None:
        for module in self._modules:
            module.attach(rng, comm)

    def describe(self) -> str:
        text = self.grid.describe()
        if self.S > 1:
            text += (f"; pipeline schedule {self.schedule}, {self.micro_batches} micro-batches, this stage "
                     f"from layer {self.stage_starts[self.grid.s]}")
        return text

    def loss_and_backward(self, x, y, weight: float = 1.0, lap=None) -> float:
        weight = weight * self.loss_scale
        if self.S == 1:
            out = self.net.forward(x, True)
            loss, dout = self._loss(out, x, y, weight)
            if lap is not None:
                lap("forward")
            self.net.backward(dout)
            return loss if self.grid.reports else 0.0
        return self._pipeline_step(x, y, weight)

    def _loss(self, out, x, y, weight):
        if self.objective is not None:
            loss, dout, _ = self.objective(self.net, out, x, y, weight)
            return loss, dout
        loss, dout = self.loss_fn(out, y)
        if weight != 1.0:
            dout *= weight
        return loss, dout

    def _pipeline_step(self, x, y, weight) -> float:
        g, link = self.grid, self.link
        n = len(x)
        parts = [p for p in np.array_split(np.arange(n), min(self.micro_batches, n)) if len(p)]
        ops = schedule_ops(self.schedule, g.s, self.S, len(parts))
        held, douts, total = {}, {}, 0.0
        for k, (op, i) in enumerate(ops):
            if op == "F":
                if g.first_stage:
                    inp = x[parts[i]]
                else:
                    inp = link.recv_array(g.s - 1, FORWARD_TAG, f"Recv(activations of micro-batch {i + 1} from stage {g.s})")
                out = self.net.forward(inp, True)
                if g.last_stage:
                    share = len(parts[i]) / n
                    loss, douts[i] = self._loss(out, None, y[parts[i]], weight * share)
                    total += loss * share
                else:
                    link.send_array(out, g.s + 1, FORWARD_TAG)
                if k + 1 < len(ops) and ops[k + 1] != ("B", i):  # another forward comes first
                    held[i] = save_state(self._modules)
            else:
                if i in held:
                    restore_state(self._modules, held.pop(i))
                if g.last_stage:
                    dy = douts.pop(i)
                else:
                    dy = link.recv_array(g.s + 1, BACKWARD_TAG, f"Recv(gradients of micro-batch {i + 1} from stage {g.s + 2})")
                dx = self.net.backward(dy)
                if not g.first_stage:
                    link.send_array(dx, g.s - 1, BACKWARD_TAG)
        link.finish()
        return total if g.reports else 0.0

    def _forward_eval(self, x):
        """The outputs on the last stage, None on the others."""
        if self.S == 1:
            return self.net.forward(x, False)
        g, link = self.grid, self.link
        inp = x if g.first_stage else link.recv_array(g.s - 1, FORWARD_TAG, f"Recv(evaluation activations from stage {g.s})")
        out = self.net.forward(inp, False)
        if g.last_stage:
            return out
        link.send_array(out, g.s + 1, FORWARD_TAG)
        link.finish()
        return None

    def forward(self, x, train: bool = False):
        if train:
            raise ConfigError("ShardedModel.forward trains through loss_and_backward only")
        return self._forward_eval(x)

    def evaluate_sums(self, x, y) -> tuple[float, ...]:
        from mpidl.models.base import sums_of_outputs
        out = self._forward_eval(x)
        width = 2 + len(self.term_names)
        if not self.grid.reports:
            return (0.0,) * width
        return sums_of_outputs(self, out, x, y)

    def predict(self, x, batch_size: int = 1000, scale: float = 1.0) -> np.ndarray:
        """Outputs in evaluation mode on every rank of this replica (the last stage's, broadcast)."""
        dtype = self.store.data.dtype
        outs = []
        for i in range(0, len(x), batch_size):
            batch = np.asarray(x[i:i + batch_size]).astype(dtype, copy=True)
            batch *= scale
            out = self._forward_eval(batch)
            outs.append(self._share_from_last_stage(out))
        return np.concatenate(outs) if outs else np.zeros((0,))

    def _share_from_last_stage(self, out):
        if self.S == 1:
            return out
        pipe, last = self.grid.pipeline, self.S - 1
        header = np.zeros(8, dtype=np.int64)
        if self.grid.last_stage:
            header[0] = out.ndim
            header[1:1 + out.ndim] = out.shape
        pipe.bcast_(header, root=last)
        buf = np.ascontiguousarray(out) if self.grid.last_stage else np.empty(
            tuple(int(s) for s in header[1:1 + header[0]]), dtype=self.store.data.dtype)
        return pipe.bcast_(buf, root=last)

    # -- the whole model's layout (checkpoints, exported weights) ------------------------
    def whole_layout(self) -> dict:
        return {"names": [w[0] for w in self.whole], "shapes": [list(w[1]) for w in self.whole],
                "offsets": [w[2] for w in self.whole]}

    def _pieces(self, s: int, t: int):
        """(whole offset, whole shape, split, shard size) of each parameter of stage s, shard t,
        in its local order."""
        for name, shape, offset, stage, split in self.whole:
            if stage == s:
                local = shape if split is None else split.shard_shape(shape, self.T)
                yield offset, shape, split, int(np.prod(local, dtype=np.int64)), local

    def gather_whole(self, local: np.ndarray) -> np.ndarray | None:
        """Collective over the world: an array laid out like this rank's flat buffer (weights,
        an optimiser moment) assembled into the whole model's layout on world rank 0; None on
        the other ranks. Replica 0 sends its shards; the other replicas hold the same."""
        g = self.grid
        if g.d != 0:
            return None
        pieces = g.model.gather_flat(np.ascontiguousarray(local), root=0)
        if pieces is None:
            return None
        whole = np.zeros(self.whole_size, dtype=local.dtype)
        for r, piece in enumerate(pieces):
            t, s = r % self.T, r // self.T
            at = 0
            for offset, shape, split, size, local_shape in self._pieces(s, t):
                chunk = piece[at:at + size].reshape(local_shape)
                at += size
                target = whole[offset:offset + int(np.prod(shape, dtype=np.int64))].reshape(shape)
                if split is None:
                    target[...] = chunk
                else:
                    split.put(target, t, self.T, chunk)
        return whole

    def scatter_whole(self, whole: np.ndarray | None, out: np.ndarray) -> np.ndarray:
        """Collective over the world, the inverse: world rank 0 passes the whole-layout array,
        every rank gets its shard's part in `out` (laid out like its flat buffer)."""
        buf = whole if self.grid.world.rank == 0 else np.empty(self.whole_size, dtype=out.dtype)
        buf = np.ascontiguousarray(buf, dtype=out.dtype)
        self.grid.world.bcast_(buf, root=0)
        at = 0
        for offset, shape, split, size, _ in self._pieces(self.grid.s, self.grid.t):
            part = buf[offset:offset + int(np.prod(shape, dtype=np.int64))].reshape(shape)
            out[at:at + size] = (part if split is None else split.take(part, self.grid.t, self.T)).reshape(-1)
            at += size
        return out

    def whole_store(self) -> ParamStore | None:
        """Collective: the whole model's weights in a ParamStore of the single-process layout on
        world rank 0 (for save_weights and mpidl.load); None elsewhere."""
        data = self.gather_whole(self.store.data)
        if data is None:
            return None
        store = ParamStore()
        for name, shape, _, _, _ in self.whole:
            store.add(name, shape, None)
        store.allocate(data.dtype, initialise=False)
        store.data[...] = data
        return store
