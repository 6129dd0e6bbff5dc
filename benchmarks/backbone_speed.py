"""Feature extraction speed of the frozen backbones: batch norms folded (what the library runs) against
the network as published.

    python benchmarks/backbone_speed.py [--images 1024] [--rounds 3] [--batch-size 128] [--resolution 128]

Random 32 px images (the speed does not depend on their content), the library's input path (upsampled to
``--resolution``, channels_last), all threads of the machine. The two variants run in alternating rounds
so that the machine's drift hits both alike; prints images/s per round, the medians, their ratio and the
largest difference between the two variants' features.
"""

from __future__ import annotations

import argparse
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


if __name__ == "__main__":
    main()
