"""``backfill evaluate EMB.npz``: curves of strategies over backfill ratios (the engine only)."""

from __future__ import annotations

import argparse


def add_evaluate(sub: argparse._SubParsersAction) -> None:
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
