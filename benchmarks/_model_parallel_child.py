"""One run of benchmarks/model_parallel.py under mpiexec: train a model on a grid for a fixed
number of steps and print one JSON line from rank 0 with, per rank, the bytes of parameters,
gradients and optimiser state, the peak private memory, the bytes each step passed to the
tensor group's Allreduces, to the pipeline's sends and to the gradient reduction, beside what
the formulas predict, and the median step time."""

import argparse
import json
import time

import numpy as np

from _data_child import rss_anon_mb


class StepProbe:
    """Hook: the time of every step and the traffic counters after it; peak memory."""

    def __init__(self):
        self.times, self.counters, self.peak = [], [], rss_anon_mb()

    def on_step(self, trainer):
        self.times.append(time.perf_counter())
        self.counters.append(traffic(trainer))
        if trainer.global_step % 5 == 0:
            self.peak = max(self.peak, rss_anon_mb())


def traffic(trainer):
    """(tensor-group Allreduce bytes, pipeline bytes sent, gradient Allreduce bytes) so far."""
    grid = trainer.grid
    if grid is None:
        return 0, 0, 0
    tensor = sum(v for k, v in getattr(grid.tensor, "traffic", {}).items())
    link = trainer.model.link
    pipe = link.bytes_sent if link is not None else 0
    grads = getattr(grid.data, "traffic", {}).get("Allreduce(gradients)", 0)
    return tensor, pipe, grads


def predicted(trainer):
    """Bytes per step by the formulas: each row-parallel layer and each head-parallel attention
    sums its output (batch rows x width) forward and its input gradient backward (a column
    layer that is not the network's first sends its input gradient); each stage boundary
    passes its activations forward and their gradients back, plus a 64-byte header per
    micro-batch each way; replicas reduce this rank's gradient buffer once."""
    from mpidl.nn import Linear
    from mpidl.parallel.tensor import ColumnParallelLinear, HeadParallelSelfAttention, RowParallelLinear
    model, cfg = trainer.model, trainer.cfg
    T = model.T
    grid = trainer.grid
    item = trainer.store.data.itemsize
    rows = cfg.batch_size // grid.shape.data
    # the transformer's blocks act on every image row (its sequence); the mlp on whole samples
    tokens = rows * (trainer.data.sample_shape[-2] if cfg.model == "transformer" else 1)
    tensor = 0
    for m in model.net.modules():
        if isinstance(m, RowParallelLinear):
            tensor += tokens * m.W.shape[0] * item
        elif isinstance(m, ColumnParallelLinear) and m.need_input_grad:
            tensor += tokens * m.W.shape[1] * item
        elif isinstance(m, HeadParallelSelfAttention):
            tensor += 2 * tokens * m.W_in.shape[1] * item
    pipe = 0
    if model.S > 1:
        micro = min(model.micro_batches, rows)
        # activations leaving this stage (forward) and gradients leaving it (backward)
        dense = [m for m in model.net.modules() if isinstance(m, (Linear, HeadParallelSelfAttention))]
        # inside a split dense pair the activations are this rank's 1/T of them
        out_split = T if dense and isinstance(dense[-1], ColumnParallelLinear) else 1
        in_split = T if dense and isinstance(dense[0], RowParallelLinear) else 1
        width_out = trainer.boundaries[grid.s] // out_split if not grid.last_stage else 0
        width_in = trainer.boundaries[grid.s - 1] // in_split if not grid.first_stage else 0
        pipe = rows * (width_out + width_in) * item + 64 * micro * ((width_out > 0) + (width_in > 0))
    grads = trainer.store.data.nbytes if grid.shape.data > 1 else 0
    return tensor, pipe, grads


def boundary_widths(cfg, trainer):
    """Elements per sample entering each stage after the first, for the whole model: from the
    layer sizes of a plain mlp (no rank builds the wide one whole), else from a one-sample pass
    through a whole copy."""
    from mpidl.models import build_model
    from mpidl.nn import Flatten, Linear, ReLU
    starts = trainer.model.stage_starts[1:]
    whole = build_model(cfg.model, trainer.data.sample_shape, trainer.data.num_classes, cfg.model_options(),
                        dtype=cfg.dtype, allocate=False)
    layers = list(zip(whole.net.names, whole.net.layers))
    if all(isinstance(layer, (Flatten, Linear, ReLU)) for _, layer in layers):
        widths, width = [], int(np.prod(trainer.data.sample_shape))
        for name, layer in layers:
            if name in starts:
                widths.append(width)
            width = layer.W.shape[0] if isinstance(layer, Linear) else width
        return widths
    whole = build_model(cfg.model, trainer.data.sample_shape, trainer.data.num_classes, cfg.model_options(),
                        dtype=cfg.dtype)
    x = trainer.data.inputs(trainer.data.x_train[:1], trainer.dtype)
    widths = []
    for name, layer in zip(whole.net.names, whole.net.layers):
        if name in starts:
            widths.append(x.size)
        x = layer.forward(x, False)
    return widths


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tensor", type=int, default=1)
    ap.add_argument("--pipeline", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args, rest = ap.parse_known_args()  # the rest: mpidl.train flags

    import mpidl
    from mpidl.cli import parse_config
    from mpidl.trainer import Trainer
    comm = mpidl.world()
    flags = [*rest, "--max-steps", str(args.steps), "--progress", "none", "--eval-batch-size", "256",
             "--tensor-parallel", str(args.tensor), "--pipeline-stages", str(args.pipeline)]
    cfg = parse_config(flags)
    probe = StepProbe()
    trainer = Trainer.from_config(cfg, comm, hooks=[probe])
    if trainer.grid is not None and args.pipeline > 1:
        trainer.boundaries = boundary_widths(cfg, trainer)
    trainer.train()
    probe.peak = max(probe.peak, rss_anon_mb())
    k0 = args.warmup
    step_ms = float(np.median(np.diff(probe.times[k0:])) * 1e3)
    # the median of per-step increments: an evaluation between two steps (its forward passes
    # use the same Allreduces and sends) does not count
    measured = np.median(np.diff(np.array(probe.counters[k0:], dtype=np.float64), axis=0), axis=0)
    expect = predicted(trainer) if trainer.grid is not None else (0, 0, 0)
    row = np.array([[trainer.store.data.nbytes, trainer.store.grad.nbytes, trainer.optimizer_state_bytes,
                     probe.peak, step_ms, *measured, *expect]], dtype=np.float64)
    val_loss = float(trainer.evaluate()[0])  # collective
    rows = comm.gather_rows(row)
    if comm.rank == 0:
        keys = ["param_bytes", "grad_bytes", "optimizer_bytes", "peak_rss_anon_mb", "step_ms",
                "tensor_bytes_per_step", "pipeline_bytes_per_step", "gradient_bytes_per_step",
                "tensor_bytes_formula", "pipeline_bytes_formula", "gradient_bytes_formula"]
        ranks = [dict(zip(keys, map(float, r[0]))) for r in rows]
        print("RESULT " + json.dumps({"ranks": ranks, "tensor": args.tensor, "pipeline": args.pipeline,
                                      "data": comm.size // (args.tensor * args.pipeline),
                                      "whole_params": int(getattr(trainer.model, "whole_size", trainer.store.size)),
                                      "val_loss": val_loss}), flush=True)


if __name__ == "__main__":
    main()
