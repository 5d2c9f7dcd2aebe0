"""The peer: PyTorch DistributedDataParallel (gloo, CPU, one thread per process) training
the same model on the same data with the same per-rank batch, timed like mpidl.

    mpiexec -n 2 python benchmarks/ddp_peer.py --model mlp --port 29512 --out ddp.json
    python benchmarks/ddp_peer.py --model cnn --threads 2 --per-rank-batch 128 --out one.json   # no DDP

One process (no launcher, or a world of 1) trains the plain module without DDP or gloo: what a
PyTorch user runs on one node, with --threads intra-op threads. resnet20 has no layer-by-layer
twin: it is benchmarks/torch_models.py's copy with PyTorch's own initial weights (same
architecture, tested against mpidl's in tests/unit/models/test_resnet.py; not compared here).

The torch network is built from mpidl's own model (layer by layer), mpidl's initial
weights are copied in and the two forward passes are compared, so "same model" is
checked, not assumed. Rank and world size come from the MPI launcher's environment;
gloo meets at 127.0.0.1:PORT (one node).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mpidl.cli import parse_config
from mpidl.data import ShardedSampler, load_dataset
from mpidl.models import Model, build_model
from mpidl.ops.conv import pair

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def launcher_rank_size() -> tuple[int, int]:
    for r, s in (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                 ("SLURM_PROCID", "SLURM_NTASKS")):
        if r in os.environ and s in os.environ:
            return int(os.environ[r]), int(os.environ[s])
    return 0, 1


def torch_twin(model: Model) -> nn.Sequential:
    """The torch network with mpidl's layers and mpidl's current weights."""
    mods = []
    for layer in model.net.layers:
        kind = type(layer).__name__
        if kind == "Linear":
            out_f, in_f = layer.W.shape
            m = nn.Linear(in_f, out_f, bias=layer.b is not None)
        elif kind in ("Conv2d", "Conv2dPoolReLU"):
            out_c, in_c, kh, kw = layer.W.shape
            m = nn.Conv2d(in_c, out_c, (kh, kw), stride=pair(layer.stride), padding=pair(layer.padding),
                          dilation=pair(getattr(layer, "dilation", 1)), bias=layer.b is not None)
        elif kind == "MaxPool2d":  # mpidl may fuse the following ReLU into the pool
            m = nn.MaxPool2d(layer.kernel, layer.stride)
            if getattr(layer, "relu", False):
                m = nn.Sequential(m, nn.ReLU())
        elif kind in ("ReLU", "Sigmoid", "Tanh", "Flatten"):
            m = getattr(nn, kind)()
        else:
            raise NotImplementedError(f"no torch twin for mpidl layer {kind}")
        if hasattr(m, "weight"):
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(np.array(layer.W.data)))
                if m.bias is not None:
                    m.bias.copy_(torch.from_numpy(np.array(layer.b.data)))
        if kind == "Conv2dPoolReLU":  # mpidl's fused block is these three torch layers
            m = nn.Sequential(m, nn.MaxPool2d(2), nn.ReLU())
        mods.append(m)
    return nn.Sequential(*mods)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--per-rank-batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--port", type=int, default=None, help="gloo's rendezvous port (several processes)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    ap.add_argument("--out", required=True)
    args, train_args = ap.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    rank, size = launcher_rank_size()
    distributed = size > 1
    if distributed:
        if args.port is None:
            ap.error("--port is needed with more than one process")
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=size)

    cfg = parse_config(["--model", args.model, "--batch-size", str(args.per_rank_batch * size), *train_args])
    data = load_dataset(cfg.dataset, cfg.data_dir)
    ours = build_model(cfg.model, data.sample_shape, data.num_classes, {"hidden": cfg.hidden_sizes()}, dtype=np.float32, seed=cfg.seed)
    if cfg.model == "resnet20":
        from torch_models import torch_resnet20
        net, diff = torch_resnet20(data.sample_shape[0] if len(data.sample_shape) == 3 else 1, data.num_classes), None
    else:
        net = torch_twin(ours)
        probe = data.inputs(data.x_val[:16], np.float32)
        with torch.no_grad():
            diff = float(np.abs(net(torch.from_numpy(probe)).numpy() - ours.forward(probe, train=False)).max())
    ddp = nn.parallel.DistributedDataParallel(net) if distributed else net
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(ddp.parameters(), lr=cfg.lr, momentum=cfg.momentum or 0.0)
    else:
        opt = torch.optim.Adam(ddp.parameters(), lr=cfg.lr)
    loss_fn = nn.CrossEntropyLoss()
    sampler = ShardedSampler(len(data.x_train), cfg.batch_size, rank, size, cfg.seed)

    def batches():
        epoch = 0
        while True:
            for step in sampler.epoch(epoch):
                yield step
            epoch += 1

    feed = batches()

    def step_once():
        step = next(feed)
        x = torch.from_numpy(data.inputs(data.x_train[step.indices], np.float32))
        y = torch.from_numpy(data.y_train[step.indices])
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(ddp(x), y)
        loss.backward()  # DDP reduces the gradients (gloo allreduce, in buckets) during backward
        opt.step()
        return loss.detach()

    for _ in range(args.warmup):
        step_once()
    if distributed:
        dist.barrier()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        last = step_once()
    if distributed:
        dist.barrier()
    elapsed = time.perf_counter() - t0
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "ranks": size, "threads": args.threads, "ddp": distributed,
                       "per_rank_batch": args.per_rank_batch,
                       "steps": args.steps, "seconds": elapsed,
                       "samples_per_sec": args.steps * cfg.batch_size / elapsed,
                       "twin_max_abs_diff": diff, "twin_verified": diff is not None and diff < 1e-3,
                       "final_loss": float(last),
                       "torch": torch.__version__}, f, indent=2)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
