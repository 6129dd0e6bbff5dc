#!/usr/bin/env bash
# How the shipped weights were made: `bash pretrained/train.sh fashion_mnist` and
# `BACKFILL_CIFAR100=../shared/data/cifar100 bash pretrained/train.sh cifar100`.
# Each stage writes <name>.pt plus its JSON card (which records the exact command) into
# pretrained/<dataset>/<setting>/. Stages are resumable: a finished checkpoint is not trained again.
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=${1:?usage: train.sh fashion_mnist|cifar100 [stage]}
stage=${2:-all}
train() {  # train KIND OUT [args...]: skip when OUT exists (delete it to retrain)
  local kind=$1 out=$2; shift 2
  if [ -f "$out" ]; then echo "exists: $out"; return; fi
  mkdir -p "$(dirname "$out")"
  backfill train "$kind" --dataset "$dataset" --out "$out" --resume --no-progress "$@"
}
transforms() {  # transforms DIR [ablation]: psi (regression), psi (metric-compatible), psi + rho
  local dir=$1 cache=cache/features_${dataset}_$(basename "$1").npz
  local common=(--dataset "$dataset" --old "$dir/old.pt" --new "$dir/new.pt" --feature-cache "$cache" --threads 1 --no-progress
                "${transform_options[@]}")
  [ -f "$dir/psi_regression.pt" ] || backfill train transform "${common[@]}" --loss regression --out "$dir/psi_regression.pt"
  [ -f "$dir/psi_mc.pt" ] || backfill train transform "${common[@]}" --loss mc --out "$dir/psi_mc.pt"
  [ -f "$dir/psi_mc_rho.pt" ] || backfill train transform "${common[@]}" --loss mc --rho --out "$dir/psi_mc_rho.pt"
  if [ "${2:-}" = ablation ]; then  # the L_MC ablation: old-space only, new-space only, separate denominators
    # The new-space-only loss gives psi no gradient, so that denominator trains rho too and psi gets the
    # regression term (weight 1, whatever the dataset's default).
    for v in old new separate; do
      local extra=(); [ "$v" = new ] && extra=(--rho --regression-weight 1)
      [ -f "$dir/ablation/psi_mc_$v.pt" ] || { mkdir -p "$dir/ablation"; backfill train transform "${common[@]}" \
        --loss mc --denominator "$v" "${extra[@]}" --out "$dir/ablation/psi_mc_$v.pt"; }
    done
  fi
}
transform_options=()  # extra options of every `train transform` of the dataset
case "$dataset" in
  fashion_mnist)
    d=pretrained/fashion_mnist/homogeneous
    backbones() {
      train old "$d/old.pt" --classes 5
      train new "$d/new.pt" --epochs 3
      train bct "$d/bct.pt" --old "$d/old.pt" --epochs 3
    }
    heads() { transforms "$d"; }
    ;;
  cifar100)
    # Heads on frozen ImageNet-pretrained EfficientNet-Lite backbones (features cached once per backbone and
    # split in ~/.cache/backfill/features; the first stage that needs them computes them with a progress bar).
    d=pretrained/cifar100/homogeneous    # old Lite0 (classes 0-49) -> new Lite0 (all classes)
    h=pretrained/cifar100/heterogeneous  # old Lite0 (classes 0-49) -> new Lite2 (all classes)
    lite0=(--backbone efficientnet_lite0); lite2=(--backbone efficientnet_lite2)
    backbones() {
      train old "$d/old.pt" --classes 50 "${lite0[@]}"
      train new "$d/new.pt" "${lite0[@]}"
      train bct "$d/bct.pt" --old "$d/old.pt" "${lite0[@]}"
      # The old model is the same in both settings: the heterogeneous suite gets a copy of it.
      mkdir -p "$h"; [ -f "$h/old.pt" ] || { cp "$d/old.pt" "$h/old.pt"; cp "$d/old.json" "$h/old.json"; }
      train new "$h/new.pt" "${lite2[@]}"
      train bct "$h/bct.pt" --old "$h/old.pt" "${lite2[@]}"
    }
    # psi / rho: 40 epochs instead of 15, psi's hidden width 1024 instead of 256, pure L_MC (no regression term)
    # at temperature 0.05, on the mirrored train images (the heads embed the clean ones they trained on too
    # tightly): held-out sweeps (sweep_mc.py, sweep_merge.py --psi-grid, --view), benchmarks/README.md
    transform_options=(--epochs 40 --hidden 1024 --regression-weight 0 --temperature 0.05 --view flip)
    # The two settings' transforms run side by side, each on one thread: 28 min here with Lite0's mirrored
    # features already cached (Lite2's computed on the way); about 40 min from scratch (18 on the clean view).
    heads() { transforms "$d" ablation & local hom=$!; transforms "$h"; wait "$hom"; }
    ablation() { transforms "$d" ablation; }
    ;;
  *) echo "unknown dataset $dataset" >&2; exit 2 ;;
esac
case "$stage" in
  backbones) backbones ;;
  heads) heads ;;
  ablation) "$stage" ;;
  all) backbones; heads ;;
  *) echo "unknown stage $stage (backbones, heads, all)" >&2; exit 2 ;;
esac
