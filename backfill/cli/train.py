"""``backfill train old|new|bct|transform|gain-predictor``: models, heads on pretrained backbones, psi and rho,
and the ``predicted_gain`` order's predictor."""

from __future__ import annotations

import argparse
from dataclasses import replace

from backfill.cli.common import BACKBONE_NAMES, DATASETS, command_line


def add_train(sub: argparse._SubParsersAction) -> None:
    """``backfill train {old,new,bct,transform,gain-predictor} ...`` (see ``_add_train_transform`` and
    ``_add_train_gain_predictor``)."""
    train = sub.add_parser("train", help="train old/new/BCT models, the reverse transformation psi or the "
                           "predicted_gain order's predictor",
                           description="Train a model; writes OUT.pt and its OUT.json card.")
    train_sub = train.add_subparsers(dest="train_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("data")
    g.add_argument("--dataset", required=True, choices=DATASETS)
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
    g.add_argument("--backbone", choices=BACKBONE_NAMES, default=None,
                   help="train only an embedding head on this frozen ImageNet-pretrained backbone (RGB "
                        "datasets; its features are computed once and cached) instead of a network from scratch")
    g.add_argument("--resolution", type=int, default=None,
                   help="--backbone: side the 32 px images are upsampled to (default 128)")
    g.add_argument("--hidden", type=int, default=None, help="--backbone: hidden width of the head (default 512)")
    g.add_argument("--logit-scale", type=float, default=None,
                   help="--backbone: scale s of the cosine classifier, logits = s cos (default 8)")
    g.add_argument("--view", default=None, metavar="VIEW[+VIEW]",
                   help="--backbone: the views of the train images the head learns from, each image's picked per "
                        "epoch at random: clean, flip (mirrored), crop, or several joined by '+' (default clean)")
    g = common.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None,
                   help="default: 15 (cifar100), 5 (fashion_mnist); 60 with --backbone")
    g.add_argument("--batch-size", type=int, default=None, help="default 128 (256 with --backbone)")
    g.add_argument("--lr", type=float, default=None,
                   help="OneCycle peak learning rate (default 0.1; 2e-3 with --backbone)")
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
    _add_train_gain_predictor(train_sub)


def _run_train_backbone(args: argparse.Namespace) -> int:
    """Handler of ``backfill train old|new|bct``."""
    from backfill.training import TrainConfig, train_backbone

    if args.backbone:
        return _run_train_head(args)
    for flag in ("resolution", "hidden", "logit_scale", "view"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag.replace('_', '-')} is an option of --backbone")
    cfg = TrainConfig(
        kind=args.train_kind, dataset=args.dataset, out=args.out, data=args.data, download=args.download,
        classes=args.classes, arch=args.arch, depth=args.depth, width=args.width, dim=args.dim,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, seed=args.seed, device=args.device, threads=args.threads,
        resume=args.resume, subsample=args.subsample, old=getattr(args, "old", None),
        bct_weight=getattr(args, "bct_weight", 1.0), progress=not args.no_progress,
        command=command_line(args),
    )
    return _report(args.out, train_backbone(cfg).card)


def _run_train_head(args: argparse.Namespace) -> int:
    """``backfill train old|new|bct --backbone NAME``: a head on a frozen pretrained backbone."""
    from backfill.head_training import default_config, train_head

    for flag in ("arch", "depth", "width", "subsample"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag} does not apply to --backbone (the backbone is fixed and pretrained)")
    cfg = default_config(
        kind=args.train_kind, backbone=args.backbone, dataset=args.dataset, out=args.out, data=args.data,
        download=args.download, classes=args.classes, old=getattr(args, "old", None),
        resolution=args.resolution, hidden=args.hidden, logit_scale=args.logit_scale, dim=args.dim, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.head_weight_decay, view=args.view,
        label_smoothing=args.label_smoothing, bct_weight=getattr(args, "bct_weight", None), seed=args.seed,
        device=args.device, threads=args.threads, progress=not args.no_progress,
        command=command_line(args),
    )
    return _report(args.out, train_head(cfg).card)


def _report(out: str, card: dict) -> int:
    metrics = card["metrics"]
    print(f"{out}: test accuracy {metrics['test_acc']:.4f}, last-epoch train accuracy {metrics['train_acc']:.4f}")
    return 0


def _add_old_new_and_data(p: argparse.ArgumentParser) -> None:
    """The options of a command that trains against an old/new checkpoint pair on a dataset's train split."""
    p.add_argument("--old", required=True, metavar="OLD.pt", help="the old model's checkpoint")
    p.add_argument("--new", required=True, metavar="NEW.pt", help="the new model's checkpoint")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data", metavar="DIR", default=None, help="dataset directory (see `train old --help`)")
    p.add_argument("--download", action="store_true", help="download with torchvision if not found")


def _add_train_transform(sub: argparse._SubParsersAction) -> None:
    """``backfill train transform ...``: psi (and rho) on features of the frozen old/new models.

    Unset options default to ``None`` here so that the values chosen by measurement live in one place,
    ``backfill.transform_training.TransformConfig`` (importing it here would load torch for ``--help``).
    """
    text = ("train the reverse transformation psi (new -> old space), optionally with the new head rho, on "
            "cached embeddings of the train split by the frozen old and new models")
    p = sub.add_parser("transform", help=text, description=text + ". Writes OUT.pt and OUT.json (and, with "
                       "--rho, the head next to it).")
    _add_old_new_and_data(p)
    p.add_argument("--loss", choices=["regression", "mc"], default="regression",
                   help="regression: L2 to the old embedding; mc: metric-compatible contrastive loss")
    p.add_argument("--denominator", choices=["joint", "old", "new", "separate"], default="joint",
                   help="L_MC's negatives: joint (both spaces in one denominator, the method) or the ablations "
                        "old-space only, new-space only, separate denominators")
    p.add_argument("--rho", action="store_true", help="also train the new-model head rho (--loss mc)")
    p.add_argument("--rho-anchor", type=float, default=None, metavar="W",
                   help="weight of a penalty on rho's distance to the new embedding (default 0: none)")
    p.add_argument("--rho-hidden", type=int, default=None, metavar="N",
                   help="rho's hidden width: a residual MLP instead of the linear rho (default: linear)")
    p.add_argument("--rho-out", metavar="RHO.pt", default=None,
                   help="where rho goes (default: psi_mc_rho.pt -> rho_mc.pt, NAME.pt -> rho_NAME.pt)")
    p.add_argument("--temperature", type=float, default=None,
                   help="L_MC temperature (default 0.02, chosen by a held-out sweep)")
    p.add_argument("--hard-negatives", type=int, default=None, metavar="K",
                   help="keep the K hardest negatives per anchor, 0 = all (default: all)")
    p.add_argument("--regression-weight", type=float, default=None,
                   help="weight of the regression term added to L_MC (default 1)")
    p.add_argument("--view", default="clean", metavar="VIEW[+VIEW]",
                   help="the train images as psi/rho see them: clean, flip (mirrored), crop (a random padded crop "
                        "and flip per image), or several joined by '+', one row per image and view (default "
                        "clean; the altered views are embedded as loosely as unseen images, not as tightly as "
                        "the images the models trained on)")
    p.add_argument("--augmented-copies", type=int, default=0, metavar="N",
                   help="end-to-end models: also N randomly augmented copies of every train image (default 0)")
    p.add_argument("--feature-cache", metavar="FEATS.npz", default=None,
                   help="reuse/write the cached features here (checked against the weights' SHA-256)")
    p.add_argument("--epochs", type=int, default=None, help="default 15")
    p.add_argument("--batch-size", type=int, default=None, help="default 256")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--hidden", type=int, default=None, metavar="N",
                   help="psi's hidden width (default 2 x the larger embedding dimension)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: one per core)")
    p.add_argument("--out", required=True, metavar="PSI.pt", help="psi's weights; the card goes to PSI.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_train_transform)


def _run_train_transform(args: argparse.Namespace) -> int:
    """Handler of ``backfill train transform``."""
    from backfill.transform_training import TransformConfig, train_transform

    if args.rho and args.loss != "mc":
        raise ValueError("--rho needs --loss mc (rho is trained by the metric-compatible loss)")
    if args.rho_anchor is not None and not args.rho:
        raise ValueError("--rho-anchor needs --rho")
    if args.rho_hidden is not None and not args.rho:
        raise ValueError("--rho-hidden needs --rho")
    options = {"temperature": args.temperature, "regression_weight": args.regression_weight,
               "rho_anchor": args.rho_anchor, "rho_hidden": args.rho_hidden,
               "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "hidden": args.hidden}
    config = TransformConfig(loss=args.loss, denominator=args.denominator, rho=args.rho, view=args.view,
                             augmented_copies=args.augmented_copies, seed=args.seed, device=args.device,
                             **{key: value for key, value in options.items() if value is not None})
    if args.hard_negatives is not None:
        config = replace(config, hard_negatives=args.hard_negatives or None)  # 0 = all negatives
    cards = train_transform(
        args.old, args.new, args.out, config, dataset=args.dataset, data=args.data, download=args.download,
        rho_out=args.rho_out, feature_cache=args.feature_cache, threads=args.threads,
        command=command_line(args), progress=not args.no_progress,
    )
    last = cards["psi"]["history"][-1]
    print(f"{args.out}: last-epoch loss {last['loss']:.4f}")
    if "rho" in cards:
        print(f"{cards['psi']['rho_model']['path']}: rho written")
    return 0


def _add_train_gain_predictor(sub: argparse._SubParsersAction) -> None:
    """``backfill train gain-predictor ...``: the ``predicted_gain`` order's predictor (defaults in
    ``backfill.gain_prediction``; unset options are ``None`` here so that ``--help`` loads no torch)."""
    text = ("fit the predicted_gain backfill order's predictor: from an old embedding, the margin gain the new "
            "model brings, learnt on the train images where both models and the labels are known")
    p = sub.add_parser("gain-predictor", help=text, description=text + ". Writes OUT.pt and OUT.json (a suite "
                       "holds it as gain_predictor.pt).")
    _add_old_new_and_data(p)
    p.add_argument("--view", default=None, metavar="VIEW[+VIEW]",
                   help="the views of the train images it learns from, one row per image and view (default "
                        "flip+crop: the models embed the clean images they trained on too tightly)")
    p.add_argument("--hidden", type=int, default=None, help="hidden width (default 256)")
    p.add_argument("--epochs", type=int, default=None, help="default 20")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: one per core)")
    p.add_argument("--out", required=True, metavar="PATH.pt", help="weights file; the card goes to PATH.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_train_gain_predictor)


def _run_train_gain_predictor(args: argparse.Namespace) -> int:
    """Handler of ``backfill train gain-predictor``."""
    from backfill.gain_prediction import train_gain_predictor

    options = {"view": args.view, "hidden": args.hidden, "epochs": args.epochs}
    card = train_gain_predictor(args.old, args.new, args.out, dataset=args.dataset, data=args.data,
                                download=args.download, seed=args.seed, threads=args.threads,
                                command=command_line(args), progress=not args.no_progress,
                                **{key: value for key, value in options.items() if value is not None})
    metrics = card["metrics"]
    print(f"{args.out}: train MSE {metrics['train_mse']:.3f}, rank correlation with the oracle's gain on the "
          f"test split {metrics['test_rank_correlation']:.3f}")
    return 0
