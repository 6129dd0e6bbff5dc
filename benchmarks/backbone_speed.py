"""Feature extraction speed of the frozen backbones: batch norms folded (what the library runs) against
the network as published; then one process on every core against one single-thread process per core.

    python benchmarks/backbone_speed.py [--images 1024] [--rounds 3] [--batch-size 128] [--resolution 128]

Random 32 px images (the speed does not depend on their content), the library's input path (upsampled to
``--resolution``, channels_last), all threads of the machine. The two variants run in alternating rounds
so that the machine's drift hits both alike; prints images/s per round, the medians, their ratio and the
largest difference between the two variants' features.

The second table is how to spend the cores on a long extraction (``pretrained/train.sh``): the folded
network in one process with one thread per core, against as many processes of one thread each, started
together, each on its own share of the images (their images/s: all the images over the slowest one's time).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

import numpy as np
import torch

from backfill.backbones import BACKBONES, FrozenBackbone, imagenet_net
from backfill.images import normalize_uint8, to_tensor_uint8


def images_per_second(net: torch.nn.Module, inputs: list[torch.Tensor]) -> tuple[float, torch.Tensor]:
    """Pooled features of every batch in ``inputs``; returns (images/s, features of the first batch)."""
    start = time.perf_counter()
    with torch.inference_mode():
        outputs = [net.forward_head(net.forward_features(x), pre_logits=True) for x in inputs]
    return sum(len(x) for x in inputs) / (time.perf_counter() - start), outputs[0]


def _lane(name: str, resolution: int, images: np.ndarray, batch_size: int, threads: int,
          start: multiprocessing.synchronize.Barrier, seconds: multiprocessing.Queue) -> None:
    """One extraction process: ``threads`` torch threads, the folded network, timed from ``start``."""
    torch.set_num_threads(threads)
    backbone = FrozenBackbone(name, resolution=resolution)
    inputs = [backbone.to_backbone_input(normalize_uint8(to_tensor_uint8(images[i:i + batch_size]),
                                                         backbone.dataset))
              for i in range(0, len(images), batch_size)]
    images_per_second(backbone.net, inputs[:1])  # warm-up
    start.wait()
    t = time.perf_counter()
    images_per_second(backbone.net, inputs)
    seconds.put(time.perf_counter() - t)


def lanes_images_per_second(name: str, resolution: int, images: np.ndarray, batch_size: int, lanes: int,
                            threads: int) -> float:
    """``lanes`` processes of ``threads`` threads, each extracting its share of ``images`` at once."""
    context = multiprocessing.get_context("spawn")
    start, seconds = context.Barrier(lanes), context.Queue()
    workers = [context.Process(target=_lane, args=(name, resolution, share, batch_size, threads, start, seconds))
               for share in np.array_split(images, lanes)]
    for worker in workers:
        worker.start()
    slowest = max(seconds.get(timeout=600) for _ in workers)
    for worker in workers:
        worker.join()
    return len(images) / slowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=sorted(BACKBONES), choices=sorted(BACKBONES))
    parser.add_argument("--images", type=int, default=1024, help="images per round and variant")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--resolution", type=int, default=128)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images per round, "
          f"batch {args.batch_size}, {args.resolution} px")
    print("| backbone | round | as published, images/s | batch norms folded, images/s |")
    print("|---|---|---|---|")
    for name in args.backbones:
        folded = FrozenBackbone(name, resolution=args.resolution)
        published = imagenet_net(name).to(memory_format=torch.channels_last)
        inputs = [folded.to_backbone_input(normalize_uint8(to_tensor_uint8(images[i:i + args.batch_size]),
                                                           folded.dataset))
                  for i in range(0, args.images, args.batch_size)]
        for net in (published, folded.net):  # warm-up
            images_per_second(net, inputs[:1])
        base_speeds, fast_speeds = [], []
        for r in range(args.rounds):
            base, want = images_per_second(published, inputs)
            fast, got = images_per_second(folded.net, inputs)
            base_speeds.append(base)
            fast_speeds.append(fast)
            print(f"| {name} | {r + 1} | {base:.1f} | {fast:.1f} |", flush=True)
        base, fast = statistics.median(base_speeds), statistics.median(fast_speeds)
        diff = (got - want).abs().max().item()
        print(f"| {name} | median | {base:.1f} | {fast:.1f} ({fast / base:.2f}x; features differ by at most "
              f"{diff:.1e}) |", flush=True)

    cores = os.cpu_count() or 1
    print(f"\n| backbone | round | one process of {cores} threads, images/s | {cores} processes of one thread, "
          f"images/s |\n|---|---|---|---|")
    for name in args.backbones:
        one_speeds, lane_speeds = [], []
        for r in range(args.rounds):
            one_speeds.append(lanes_images_per_second(name, args.resolution, images, args.batch_size, 1, cores))
            lane_speeds.append(lanes_images_per_second(name, args.resolution, images, args.batch_size, cores, 1))
            print(f"| {name} | {r + 1} | {one_speeds[-1]:.1f} | {lane_speeds[-1]:.1f} |", flush=True)
        one, lane = statistics.median(one_speeds), statistics.median(lane_speeds)
        print(f"| {name} | median | {one:.1f} | {lane:.1f} ({lane / one:.2f}x) |", flush=True)


if __name__ == "__main__":
    main()
