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
  local common=(--dataset "$dataset" --old "$dir/old.pt" --new "$dir/new.pt" --feature-cache "$cache" --threads 1 --no-progress)
  [ -f "$dir/psi_regression.pt" ] || backfill train transform "${common[@]}" --loss regression --out "$dir/psi_regression.pt"
  [ -f "$dir/psi_mc.pt" ] || backfill train transform "${common[@]}" --loss mc --out "$dir/psi_mc.pt"
  [ -f "$dir/psi_mc_rho.pt" ] || backfill train transform "${common[@]}" --loss mc --rho --out "$dir/psi_mc_rho.pt"
  if [ "${2:-}" = ablation ]; then  # the L_MC ablation: old-space only, new-space only, separate denominators
    # The new-space-only loss gives psi no gradient, so that variant trains rho too (psi gets the regression term).
    for v in old new separate; do
      local extra=(); [ "$v" = new ] && extra=(--rho)
      [ -f "$dir/ablation/psi_mc_$v.pt" ] || { mkdir -p "$dir/ablation"; backfill train transform "${common[@]}" \
        --loss mc --variant "$v" "${extra[@]}" --out "$dir/ablation/psi_mc_$v.pt"; }
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
    # Two 1-thread jobs side by side use a 2-core CPU better than one 2-thread job.
    one=(--threads 1 --depth 8)
    slot_a() {  # homogeneous old (ResNet-8, width 16) -> its BCT -> homogeneous heads
      train old "$d/old.pt" --classes 50 --width 16 --epochs 10 "${one[@]}"
      train bct "$d/bct.pt" --old "$d/old.pt" --width 16 --epochs 8 "${one[@]}"
      while [ ! -f "$d/new.pt" ]; do sleep 20; done
      transforms "$d"
    }
    slot_b() {  # the new model (shared by both settings) -> heterogeneous old (width 8) -> its BCT
      train new "$d/new.pt" --width 16 --epochs 8 "${one[@]}"
      mkdir -p "$h"; [ -f "$h/new.pt" ] || { cp "$d/new.pt" "$h/new.pt"; cp "$d/new.json" "$h/new.json"; }
      train old "$h/old.pt" --classes 50 --width 8 --epochs 10 "${one[@]}"
      transforms "$h"
      train bct "$h/bct.pt" --old "$h/old.pt" --width 16 --epochs 8 "${one[@]}"
    }
    backbones() { slot_a & slot_b & wait; }
    heads() { transforms "$d" ablation; transforms "$h"; }
    ablation() { transforms "$d" ablation; }
    ;;
  *) echo "unknown dataset $dataset" >&2; exit 2 ;;
esac
case "$stage" in
  backbones) backbones ;;
  heads) heads ;;
  slot_a|slot_b|ablation) "$stage" ;;
  all) backbones; heads ;;
  *) echo "unknown stage $stage (backbones, heads, all)" >&2; exit 2 ;;
esac
