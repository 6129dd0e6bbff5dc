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
transform() {  # transform DIR NAME: train DIR/NAME.pt (psi and, with --rho, rho) unless it exists, on $threads (1)
  local dir=$1 name=$2 cache=cache/features_${dataset}_$(basename "$1").npz args
  case "$name" in
    psi_regression) args=(--loss regression) ;;
    psi_mc) args=(--loss mc) ;;
    psi_mc_rho)  # rho's own view options (and their own feature cache, as the lanes run side by side)
      args=(--loss mc --rho "${rho_options[@]}"); [ ${#rho_options[@]} -eq 0 ] || cache=${cache%.npz}_rho.npz ;;
    # The L_MC ablation: old-space only, new-space only, separate denominators. The new-space-only loss
    # gives psi no gradient, so that denominator trains rho too and psi gets the regression term (weight 1,
    # whatever the dataset's default).
    ablation/psi_mc_old | ablation/psi_mc_separate) args=(--loss mc --denominator "${name#ablation/psi_mc_}") ;;
    ablation/psi_mc_new) args=(--loss mc --denominator new --rho --regression-weight 1) ;;
    *) echo "unknown transform $name" >&2; return 2 ;;
  esac
  if [ -f "$dir/$name.pt" ]; then echo "exists: $dir/$name.pt"; return; fi
  mkdir -p "$(dirname "$dir/$name.pt")"
  backfill train transform --dataset "$dataset" --old "$dir/old.pt" --new "$dir/new.pt" --feature-cache "$cache" \
    --threads "${threads:-1}" --no-progress "${transform_options[@]}" "${args[@]}" --out "$dir/$name.pt"
}
transforms() {  # transforms DIR NAME...: one after the other
  local dir=$1 name; shift
  for name in "$@"; do
    transform "$dir" "$name"
  done
}
transform_options=()  # extra options of every `train transform` of the dataset
rho_options=()        # and of psi + rho (psi_mc_rho) after them
case "$dataset" in
  fashion_mnist)
    d=pretrained/fashion_mnist/homogeneous
    backbones() {
      train old "$d/old.pt" --classes 5
      train new "$d/new.pt" --epochs 3
      train bct "$d/bct.pt" --old "$d/old.pt" --epochs 3
    }
    heads() { transforms "$d" psi_regression psi_mc psi_mc_rho; }
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
    # psi + rho on the mirrored and the cropped train images (a row per image and view): rho then ends above
    # new/new, where on the mirrored ones alone it ends below (sweep_psi_views.py, benchmarks/README.md).
    rho_options=(--view flip+crop)
    ablation=(ablation/psi_mc_old ablation/psi_mc_new ablation/psi_mc_separate)
    heads() {
      # Each suite's psi_regression first, one after the other on both cores: they compute the mirrored
      # backbone features once (Lite0's, which both suites' old model reads, then Lite2's); then the other
      # seven transforms in two lanes of one thread each. From scratch here: backbones 30 min, heads 28 min
      # before psi_mc_rho's cropped view, which adds its features (about 7 + 8 min idle) and twice the rows.
      threads=2 transform "$d" psi_regression; threads=2 transform "$h" psi_regression
      transforms "$d" "${ablation[@]}" & local lane=$!
      transforms "$d" psi_mc psi_mc_rho; transforms "$h" psi_mc psi_mc_rho
      wait "$lane"
    }
    ablation() { transforms "$d" "${ablation[@]}"; }
    ;;
  *) echo "unknown dataset $dataset" >&2; exit 2 ;;
esac
case "$stage" in
  backbones) backbones ;;
  heads) heads ;;
  ablation) "$stage" ;;
  all) backbones; heads ;;
  *) echo "unknown stage $stage (backbones, heads, ablation, all)" >&2; exit 2 ;;
esac
