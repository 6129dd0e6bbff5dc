"""Command-line front end: ``backfill evaluate | train | embed | reproduce``.

Each sub-command has one ``_add_<name>`` function that declares its arguments and binds a handler.
Handlers import their library modules lazily so that ``backfill --help`` stays fast and so that training
commands work on machines without faiss or streamlit.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    """``backfill evaluate EMB.npz ...``: the engine's curves on an embeddings file."""
    from backfill.strategies import ALIASES, STRATEGIES  # dataclasses only: cheap to import

    aliases = "; ".join(f"{a.name} = {a.strategy} on a file from `backfill embed --variant {a.embed_variant}` "
                        f"({a.meaning})" for a in ALIASES.values())
    p = sub.add_parser(
        "evaluate",
        help="mAP / top-1 / top-5 curves over backfill ratios for each strategy",
        description="Evaluate retrieval strategies along the backfill curve. Queries are the gallery "
        "(leave-one-out). EMB.npz holds labels (N,), old (N,d_o), new (N,d_n) and optionally transformed "
        "(N,d_o) and bct (N,d_o). The full method's names full and full_rho are aliases (see --strategy).",
    )
    p.add_argument("emb", metavar="EMB.npz", help="embeddings file")
    p.add_argument("--strategy", action="extend", nargs="+", choices=[*STRATEGIES, *ALIASES], metavar="NAME",
                   default=None,
                   help="strategy to evaluate; repeat the flag or list several names (duplicates are dropped; "
                        f"default: all the file supports): {', '.join(STRATEGIES)}; aliases: {aliases}")
    p.add_argument("--points", type=int, default=21, help="number of backfill ratios in [0, 1] (default 21)")
    p.add_argument("--order", default="random", metavar="random|FILE.npy",
                   help="backfill order: random (seeded) or a .npy permutation of the gallery ids")
    p.add_argument("--seed", type=int, default=0, help="seed of the random order (default 0)")
    p.add_argument("--json", metavar="OUT.json", default=None, help="write the results as JSON")
    p.set_defaults(handler=_run_evaluate)


def _embed_variant(emb_path: str) -> str | None:
    """The ``--variant`` that ``backfill embed`` recorded for ``EMB.npz`` (``None`` for a hand-made file)."""
    import json
    from pathlib import Path

    # The record is backfill.suite.inputs_path(emb); not imported from there, which would load torch.
    record = Path(emb_path).with_suffix(".inputs.json")
    try:
        variant = json.loads(record.read_text()).get("variant")
    except (OSError, ValueError, AttributeError):
        return None
    return variant if isinstance(variant, str) else None


def _load_order(path_text: str, n: int):
    """The backfill order stored in a ``.npy`` file, checked to be a permutation of ``0..n-1``."""
    from pathlib import Path

    import numpy as np

    from backfill.ordering import validate_order

    path = Path(path_text)
    if not path.is_file():
        raise FileNotFoundError(f"no such order file: {path} (use 'random' or a .npy file)")
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":  # numpy would try it as a pickle and advise allow_pickle
            raise ValueError(f"{path}: not a .npy file")
    try:
        order = np.load(path, allow_pickle=False)
    except ValueError:
        raise ValueError(f"{path}: not a readable .npy array of gallery ids") from None
    return validate_order(order, n)


def _run_evaluate(args: argparse.Namespace) -> int:
    """Handler of ``backfill evaluate``."""
    import json
    from pathlib import Path

    from backfill.embeddings import Embeddings
    from backfill.evaluation import curve_points
    from backfill.ordering import random_order
    from backfill.report import evaluate_strategies
    from backfill.strategies import ALIASES

    emb = Embeddings.load(args.emb)
    variant = _embed_variant(args.emb)
    names = None if args.strategy is None else list(dict.fromkeys(args.strategy))  # repeated flags: once each
    for name in names or ():
        alias = ALIASES.get(name)
        if alias is not None and variant is not None and variant != alias.embed_variant:
            raise ValueError(
                f"'{name}' is {alias.strategy} on a file from `backfill embed --variant {alias.embed_variant}`"
                f" ({alias.meaning}), but {args.emb} was embedded with --variant {variant}: evaluate"
                f" {alias.strategy}, or re-embed with --variant {alias.embed_variant}"
            )
    if args.order == "random":
        order, order_desc = random_order(emb.n, seed=args.seed), f"random (seed {args.seed})"
    else:
        order, order_desc = _load_order(args.order, emb.n), str(args.order)
    result = evaluate_strategies(emb, order=order, strategies=names, points=curve_points(args.points))
    result["order"] = order_desc
    result["embeddings"] = str(args.emb)
    if variant is not None:
        result["embed_variant"] = variant
    print(f"{emb.n} queries = gallery (leave-one-out), order: {order_desc}, {args.points} points;"
          f" {result['n_excluded_queries']} queries without relevant items excluded")
    for name, res in result["strategies"].items():
        if name in ALIASES:
            alias = ALIASES[name]
            print(f"  {res['label']}: the {name} method when {alias.meaning}"
                  f" (`backfill embed --variant {alias.embed_variant}`)")
    method = [a.name for a in ALIASES.values() if a.embed_variant == variant]
    if method and "rt_merge" in result["strategies"]:
        print(f"  note: {args.emb} was embedded with --variant {variant}, so rt_merge here is the {method[0]} method")
    for key, value in result["reference"].items():
        print(f"  {key}: {value:.4f}")
    print(f"  {'strategy':<12} {'mAP@0':>7} {'mAP@1':>7} {'AUC mAP':>8} {'AUC top1':>9} {'rel.gain':>9}")
    for name, res in result["strategies"].items():
        gain = res.get("relative_gain")
        gain_txt = "-" if gain is None else f"{gain:.3f}"
        print(f"  {name:<12} {res['map'][0]:7.4f} {res['map'][-1]:7.4f} {res['auc_map']:8.4f}"
              f" {res['auc_top1']:9.4f} {gain_txt:>9}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    """``backfill train {old,new,bct,transform} ...`` (``transform``: see ``_add_train_transform``)."""
    train = sub.add_parser("train", help="train old/new/BCT models or the reverse transformation psi",
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
    g.add_argument("--backbone", choices=["efficientnet_lite0", "efficientnet_lite2"], default=None,
                   help="train only an embedding head on this frozen ImageNet-pretrained backbone (RGB "
                        "datasets; its features are computed once and cached) instead of a network from scratch")
    g.add_argument("--resolution", type=int, default=None,
                   help="--backbone: side the 32 px images are upsampled to (default 128)")
    g.add_argument("--hidden", type=int, default=None, help="--backbone: hidden width of the head (default 512)")
    g.add_argument("--flip", action="store_true",
                   help="--backbone: also train on the features of mirrored images (a second cached view)")
    g = common.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help="default: 15 (cifar100), 5 (fashion_mnist)")
    g.add_argument("--batch-size", type=int, default=None, help="default 128")
    g.add_argument("--lr", type=float, default=None, help="OneCycle peak learning rate (default 0.1)")
    g.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (default 5e-4)")
    g.add_argument("--head-weight-decay", type=float, default=None,
                   help="--backbone: AdamW weight decay of the head (default 1e-4)")
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

    if args.backbone:
        return _run_train_head(args)
    for flag in ("resolution", "hidden"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag} is an option of --backbone")
    cfg = TrainConfig(
        kind=args.train_kind, dataset=args.dataset, out=args.out, data=args.data, download=args.download,
        classes=args.classes, arch=args.arch, depth=args.depth, width=args.width, dim=args.dim,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, seed=args.seed, device=args.device, threads=args.threads,
        resume=args.resume, subsample=args.subsample, old=getattr(args, "old", None),
        bct_weight=getattr(args, "bct_weight", 1.0), progress=not args.no_progress,
        command=_command_line(args),
    )
    result = train_backbone(cfg)
    m = result.card["metrics"]
    print(f"{args.out}: test accuracy {m['test_acc']:.4f}, last-epoch train accuracy {m['train_acc']:.4f}")
    return 0


def _run_train_head(args: argparse.Namespace) -> int:
    """``backfill train old|new|bct --backbone NAME``: a head on a frozen pretrained backbone."""
    from .head_training import default_config, train_head

    for flag in ("arch", "depth", "width", "subsample"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag} does not apply to --backbone (the backbone is fixed and pretrained)")
    cfg = default_config(
        kind=args.train_kind, backbone=args.backbone, dataset=args.dataset, out=args.out, data=args.data,
        download=args.download, classes=args.classes, old=getattr(args, "old", None),
        resolution=args.resolution, hidden=args.hidden, dim=args.dim, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.head_weight_decay, flip=args.flip,
        label_smoothing=args.label_smoothing, bct_weight=getattr(args, "bct_weight", None), seed=args.seed,
        device=args.device, threads=args.threads, progress=not args.no_progress,
        command=_command_line(args),
    )
    result = train_head(cfg)
    m = result.card["metrics"]
    print(f"{args.out}: test accuracy {m['test_acc']:.4f}, last-epoch train accuracy {m['train_acc']:.4f}")
    return 0


def _add_train_transform(sub: argparse._SubParsersAction) -> None:
    """``backfill train transform ...``: psi (and rho) on features of the frozen old/new models.

    Unset options default to ``None`` here so that the values chosen by measurement live in one place,
    ``backfill.transform_training.TransformConfig`` (importing it here would load torch for ``--help``).
    """
    text = ("train the reverse transformation psi (new -> old space), optionally with the new head rho, on "
            "cached embeddings of the train split by the frozen old and new models")
    p = sub.add_parser("transform", help=text, description=text + ". Writes OUT.pt and OUT.json (and, with "
                       "--rho, the head next to it).")
    p.add_argument("--old", required=True, metavar="OLD.pt", help="the old model's checkpoint")
    p.add_argument("--new", required=True, metavar="NEW.pt", help="the new model's checkpoint")
    p.add_argument("--dataset", required=True, choices=["cifar100", "fashion_mnist"])
    p.add_argument("--data", metavar="DIR", default=None, help="dataset directory (see `train old --help`)")
    p.add_argument("--download", action="store_true", help="download with torchvision if not found")
    p.add_argument("--loss", choices=["regression", "mc"], default="regression",
                   help="regression: L2 to the old embedding; mc: metric-compatible contrastive loss")
    p.add_argument("--denominator", choices=["joint", "old", "new", "separate"], default="joint",
                   help="L_MC's negatives: joint (both spaces in one denominator, the method) or the ablations "
                        "old-space only, new-space only, separate denominators")
    p.add_argument("--rho", action="store_true", help="also train the new-model head rho (--loss mc)")
    p.add_argument("--rho-out", metavar="RHO.pt", default=None,
                   help="where rho goes (default: psi_mc_rho.pt -> rho_mc.pt, NAME.pt -> rho_NAME.pt)")
    p.add_argument("--temperature", type=float, default=None,
                   help="L_MC temperature (default 0.02, chosen by a held-out sweep)")
    p.add_argument("--hard-negatives", type=int, default=None, metavar="K",
                   help="keep the K hardest negatives per anchor, 0 = all (default: all)")
    p.add_argument("--regression-weight", type=float, default=None,
                   help="weight of the regression term added to L_MC (default 1)")
    p.add_argument("--views", type=int, default=1,
                   help="cached views per train image: 1 clean + (views-1) augmented (default 1)")
    p.add_argument("--feature-cache", metavar="FEATS.npz", default=None,
                   help="reuse/write the cached features here (checked against the weights' SHA-256)")
    p.add_argument("--epochs", type=int, default=None, help="default 15")
    p.add_argument("--batch-size", type=int, default=None, help="default 256")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: one per core)")
    p.add_argument("--out", required=True, metavar="PSI.pt", help="psi's weights; the card goes to PSI.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_train_transform)


def _run_train_transform(args: argparse.Namespace) -> int:
    """Handler of ``backfill train transform``."""
    from .transform_training import TransformConfig, train_transform

    if args.rho and args.loss != "mc":
        raise ValueError("--rho needs --loss mc (rho is trained by the metric-compatible loss)")
    options = {"temperature": args.temperature, "regression_weight": args.regression_weight,
               "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}
    config = TransformConfig(loss=args.loss, denominator=args.denominator, rho=args.rho, views=args.views,
                             seed=args.seed, device=args.device,
                             **{key: value for key, value in options.items() if value is not None})
    if args.hard_negatives is not None:
        config = replace(config, hard_negatives=args.hard_negatives or None)  # 0 = all negatives
    cards = train_transform(
        args.old, args.new, args.out, config, dataset=args.dataset, data=args.data, download=args.download,
        rho_out=args.rho_out, feature_cache=args.feature_cache, threads=args.threads,
        command=_command_line(args), progress=not args.no_progress,
    )
    last = cards["psi"]["history"][-1]
    print(f"{args.out}: last-epoch loss {last['loss']:.4f}")
    if "rho" in cards:
        print(f"{cards['psi']['rho_model']['path']}: rho written")
    return 0


def _add_embed(sub: argparse._SubParsersAction) -> None:
    """``backfill embed ...``: write the EMB.npz that ``evaluate`` reads."""
    text = "embed a dataset split with a model suite and write the EMB.npz that `backfill evaluate` reads"
    p = sub.add_parser("embed", help=text, description=text + " (cached: skipped when OUT exists and was "
                       "made from the same weights and images; --force redoes it).")
    p.add_argument("--suite", required=True, metavar="DIR",
                   help="model suite directory (old.pt, new.pt, ...)")
    p.add_argument("--dataset", required=True, choices=["cifar100", "fashion_mnist"])
    p.add_argument("--data", metavar="DIR", default=None, help="dataset directory (see `train old --help`)")
    p.add_argument("--download", action="store_true", help="download with torchvision if not found")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--variant", choices=["base", "full", "full_rho"], default="base",
                   help="base: transformed = regression psi, with bct; full: metric-compatible psi; "
                        "full_rho: new = rho(new), transformed = psi(rho(new))")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--force", action="store_true", help="recompute even if OUT is up to date")
    p.add_argument("--out", required=True, metavar="EMB.npz")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_embed)


def _run_embed(args: argparse.Namespace) -> int:
    """Handler of ``backfill embed``."""
    from .suite import embed_split

    path, reused = embed_split(args.suite, args.dataset, args.out, data=args.data, download=args.download,
                               split=args.split, variant=args.variant, batch_size=args.batch_size,
                               device=args.device, force=args.force, progress=not args.no_progress)
    print(f"{path}: {'up to date, not recomputed' if reused else 'written'}")
    return 0


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    """``backfill reproduce --dataset ... --out docs/``."""
    p = sub.add_parser("reproduce", help="reproduce the paper's comparison with the shipped weights",
                       description="Embed the test split with pretrained/<dataset>/<setting>, evaluate every "
                       "method, and write OUT/results.json, OUT/results.md and the curve images.")
    p.add_argument("--dataset", required=True, choices=["cifar100", "fashion_mnist"])
    p.add_argument("--data", default=None, metavar="DIR",
                   help="dataset directory (default: $BACKFILL_CIFAR100 / Debian Fashion-MNIST / bundle)")
    p.add_argument("--out", default="docs", metavar="DIR", help="output directory (default: docs)")
    p.add_argument("--pretrained", default="pretrained", metavar="DIR", help="weights root (default: pretrained)")
    p.add_argument("--setting", action="append", choices=["homogeneous", "heterogeneous"],
                   help="only this setting (repeatable; default: every trained one)")
    p.add_argument("--points", type=int, default=21, help="backfill ratios on the curve (default 21)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random backfill order")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_reproduce)


def _run_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce

    results = reproduce(args.dataset, args.out, args.data, args.pretrained, args.setting, args.points,
                        args.seed, progress=not args.no_progress)
    for setting, rows in results.items():
        print(f"{args.dataset} / {setting}:")
        for name, row in rows.items():
            if not name.startswith("_"):
                gain = row.get("relative_gain")
                print(f"  {name:28s} AUC-mAP {100 * row['auc_map']:5.1f}  "
                      f"gain {'-' if gain is None else f'{100 * gain:4.0f}%'}  mAP@100% {100 * row['map_at_100']:5.1f}")
    print(f"wrote {args.out}/results.json, results.md and curve images")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backfill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_evaluate, _add_train, _add_embed, _add_reproduce):
        add(sub)
    from .live.cli import add_commands as _add_live  # gallery, serve (live backfilling; imports are lazy)

    _add_live(sub)
    return parser


def _command_line(args: argparse.Namespace) -> str:
    """The command as typed, for the cards of what it writes."""
    return "backfill " + " ".join(args.argv)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:  # user errors: one clear line, no traceback
        print(f"backfill {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
