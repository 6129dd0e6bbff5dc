"""Command-line front end: ``backfill evaluate | train | embed | reproduce``.

Each sub-command has one ``_add_<name>`` function that declares its arguments and binds a handler.
Handlers import their library modules lazily so that ``backfill --help`` stays fast and so that training
commands work on machines without faiss or streamlit.
"""

from __future__ import annotations

import argparse
import sys


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    """``backfill evaluate EMB.npz ...`` (engine; contract fixed by issue 2)."""
    # Filled in by the engine work.


def _add_train(sub: argparse._SubParsersAction) -> None:
    """``backfill train {old,new,bct,transform} ...`` (``transform``: see ``_add_train_transform``)."""
    train = sub.add_parser("train", help="train old/new/BCT backbones or the compatibility transform",
                           description="Train a model; writes OUT.pt and its OUT.json card.")
    train_sub = train.add_subparsers(dest="train_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("data")
    g.add_argument("--dataset", required=True, choices=["cifar100", "fashion_mnist"])
    g.add_argument("--data", metavar="DIR", default=None,
                   help="dataset directory (default: $BACKFILL_CIFAR100 / $BACKFILL_FASHION_MNIST / "
                        "Debian IDX files)")
    g.add_argument("--download", action="store_true",
                   help="download with torchvision if not found (needs internet)")
    g.add_argument("--classes", type=int, default=None, metavar="K",
                   help="learn classes 0..K-1 (default: half for old, all for new/bct)")
    g.add_argument("--subsample", type=int, default=None, metavar="N",
                   help="at most N training images per class (seeded)")
    g = common.add_argument_group("model")
    g.add_argument("--arch", choices=["resnet", "cnn"], default=None,
                   help="CIFAR ResNet or small CNN (default: resnet for cifar100, cnn for fashion_mnist)")
    g.add_argument("--depth", type=int, default=None, help="ResNet depth, 6n+2 (default 8)")
    g.add_argument("--width", type=int, default=None, help="base channel width (default 16)")
    g.add_argument("--dim", type=int, default=128, help="embedding dimension (default 128)")
    g = common.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help="default: 15 (cifar100), 4 (fashion_mnist)")
    g.add_argument("--batch-size", type=int, default=None, help="default 128")
    g.add_argument("--lr", type=float, default=None, help="OneCycle peak learning rate (default 0.1)")
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: one per core)")
    g = common.add_argument_group("output")
    g.add_argument("--out", required=True, metavar="PATH.pt", help="weights file; the card goes to PATH.json")
    g.add_argument("--resume", action="store_true", help="continue from PATH.resume.pt if present")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    helps = {"old": "old model on the first K classes (default half)",
             "new": "new model on all classes (or the first K)",
             "bct": "new model with BCT's influence loss through the frozen, extended old classifier"}
    for kind, text in helps.items():
        p = train_sub.add_parser(kind, parents=[common], help=text, description=text)
        if kind == "bct":
            p.add_argument("--old", required=True, metavar="PATH.pt", help="the old model's checkpoint")
            p.add_argument("--bct-weight", type=float, default=1.0,
                           help="weight of the influence loss (default 1)")
        p.set_defaults(handler=_run_train_backbone, train_kind=kind)
    _add_train_transform(train_sub)


def _run_train_backbone(args: argparse.Namespace) -> int:
    """Handler of ``backfill train old|new|bct``."""
    from .training import TrainConfig, train_backbone

    cfg = TrainConfig(
        kind=args.train_kind, dataset=args.dataset, out=args.out, data=args.data, download=args.download,
        classes=args.classes, arch=args.arch, depth=args.depth, width=args.width, dim=args.dim,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, seed=args.seed, device=args.device, threads=args.threads,
        resume=args.resume, subsample=args.subsample, old=getattr(args, "old", None),
        bct_weight=getattr(args, "bct_weight", 1.0), progress=not args.no_progress,
        command="backfill " + " ".join(sys.argv[1:]),
    )
    result = train_backbone(cfg)
    m = result.card["metrics"]
    print(f"{args.out}: test accuracy {m['test_acc']:.4f}, last-epoch train accuracy {m['train_acc']:.4f}")
    return 0


def _add_train_transform(sub: argparse._SubParsersAction) -> None:
    """``backfill train transform ...`` - owned by T2 (compatibility work); stub until it lands."""


def _add_embed(sub: argparse._SubParsersAction) -> None:
    """``backfill embed ...``: write the EMB.npz that ``evaluate`` reads."""
    # Filled in by the training work.


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    """``backfill reproduce --dataset ... --out docs/``."""
    # Filled in by the reproduction work.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backfill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_evaluate, _add_train, _add_embed, _add_reproduce):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:  # user errors: one clear line, no traceback
        print(f"backfill {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
