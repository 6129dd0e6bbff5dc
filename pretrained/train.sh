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
  local common=(--dataset "$dataset" --old "$dir/old.pt" --new "$dir/new.pt" --feature-cache "$cache" --no-progress)
  [ -f "$dir/psi_regression.pt" ] || backfill train transform "${common[@]}" --loss regression --out "$dir/psi_regression.pt"
  [ -f "$dir/psi_mc.pt" ] || backfill train transform "${common[@]}" --loss mc --out "$dir/psi_mc.pt"
  [ -f "$dir/psi_mc_rho.pt" ] || backfill train transform "${common[@]}" --loss mc --rho --out "$dir/psi_mc_rho.pt"
  if [ "${2:-}" = ablation ]; then  # the L_MC ablation: old-space only, new-space only, separate denominators
    for v in old new separate; do
      [ -f "$dir/ablation/psi_mc_$v.pt" ] || { mkdir -p "$dir/ablation"; backfill train transform "${common[@]}" \
        --loss mc --variant "$v" --out "$dir/ablation/psi_mc_$v.pt"; }
    done
  fi
}
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
    d=pretrained/cifar100/homogeneous
    h=pretrained/cifar100/heterogeneous
    # CPU budget: 200 training images per class (seeded subsample), few epochs.
    sub=(--subsample 200 --depth 8)
    backbones() {
      # homogeneous: old and new are the same architecture (ResNet-8, width 16)
      train old "$d/old.pt" --classes 50 --width 16 --epochs 8 "${sub[@]}"
      train new "$d/new.pt" --width 16 --epochs 6 "${sub[@]}"
      transforms "$d"
      train bct "$d/bct.pt" --old "$d/old.pt" --width 16 --epochs 6 "${sub[@]}"
      # heterogeneous: a smaller old model (ResNet-8, width 8); the new model is the homogeneous one
      train old "$h/old.pt" --classes 50 --width 8 --epochs 8 "${sub[@]}"
      mkdir -p "$h"; [ -f "$h/new.pt" ] || { cp "$d/new.pt" "$h/new.pt"; cp "$d/new.json" "$h/new.json"; }
      transforms "$h"
      train bct "$h/bct.pt" --old "$h/old.pt" --width 16 --epochs 6 "${sub[@]}"
    }
    heads() { transforms "$d" ablation; transforms "$h"; }
    ;;
  *) echo "unknown dataset $dataset" >&2; exit 2 ;;
esac
case "$stage" in
  backbones) backbones ;;
  heads) heads ;;
  all) backbones; heads ;;
  *) echo "unknown stage $stage (backbones, heads, all)" >&2; exit 2 ;;
esac
