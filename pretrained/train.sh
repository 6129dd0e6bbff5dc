#!/usr/bin/env bash
# How the shipped weights were made: `bash pretrained/train.sh fashion_mnist` and
# `BACKFILL_CIFAR100=../shared/data/cifar100 bash pretrained/train.sh cifar100`.
# Each step writes <name>.pt plus its JSON card (which records the exact command) into
# pretrained/<dataset>/<setting>/ and logs its wall time. Stages (all: every one in turn; cifar100: also
# ablation alone) are resumable: a finished checkpoint is not trained again, cached features are not recomputed.
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=${1:?usage: train.sh fashion_mnist|cifar100 [stage]}
stage=${2:-all}
log() { echo "$(date +%T) $*"; }
train() {  # train KIND OUT [args...]: skip when OUT exists (delete it to retrain)
  local kind=$1 out=$2 start=$SECONDS; shift 2
  if [ -f "$out" ]; then echo "exists: $out"; return; fi
  mkdir -p "$(dirname "$out")"
  backfill train "$kind" --dataset "$dataset" --out "$out" --resume --no-progress "$@"
  log "$out: $((SECONDS - start)) s"
}
transform() {  # transform DIR NAME: train DIR/NAME.pt (psi and, with --rho, rho) unless it exists, on $threads (1)
  local dir=$1 name=$2 cache=cache/features_${dataset}_$(basename "$1").npz start=$SECONDS args
  case "$name" in
    psi_regression) args=(--loss regression) ;;
    psi_mc) args=(--loss mc) ;;
    psi_mc_rho)  # rho's own view options (and their own feature cache, as other lanes read the suite's)
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
  log "$dir/$name.pt: $((SECONDS - start)) s"
}
transforms() {  # transforms DIR NAME...: one after the other
  local dir=$1 name; shift
  for name in "$@"; do
    transform "$dir" "$name"
  done
}
gain_predictor() {  # gain_predictor DIR: DIR/gain_predictor.pt, the predicted_gain order's, unless it exists
  local dir=$1 start=$SECONDS
  if [ -f "$dir/gain_predictor.pt" ]; then echo "exists: $dir/gain_predictor.pt"; return; fi
  backfill train gain-predictor --dataset "$dataset" --old "$dir/old.pt" --new "$dir/new.pt" --threads "${threads:-1}" \
    --no-progress --out "$dir/gain_predictor.pt"
  log "$dir/gain_predictor.pt: $((SECONDS - start)) s"
}
transform_options=()  # extra options of every `train transform` of the dataset
rho_options=()        # and of psi + rho (psi_mc_rho) after them
case "$dataset" in
  fashion_mnist)
    d=pretrained/fashion_mnist/homogeneous
    stages=(backbones heads)
    backbones_stage() {
      train old "$d/old.pt" --classes 5
      train new "$d/new.pt" --epochs 3
      train bct "$d/bct.pt" --old "$d/old.pt" --epochs 3
    }
    heads_stage() { transforms "$d" psi_regression psi_mc psi_mc_rho; gain_predictor "$d"; }
    ;;
  cifar100)
    # Heads on frozen ImageNet-pretrained EfficientNet-Lite backbones. Every process runs one thread, two side
    # by side: on 2 cores two processes of one thread extract 17-21% more images/s than one process of two
    # (benchmarks/backbone_speed.py, benchmarks/README.md).
    d=pretrained/cifar100/homogeneous    # old Lite0 (classes 0-49) -> new Lite0 (all classes)
    h=pretrained/cifar100/heterogeneous  # old Lite0 (classes 0-49) -> new Lite2 (all classes)
    lite0=(--backbone efficientnet_lite0 --threads 1); lite2=(--backbone efficientnet_lite2 --threads 1)
    features() {  # features BACKBONE SPLIT VIEWS: cached in ~/.cache/backfill/features ($BACKFILL_FEATURE_CACHE)
      local start=$SECONDS
      backfill features --dataset cifar100 --backbone "$1" --split "$2" --view "$3" --threads 1 --no-progress
      log "$1 $2 $3 features: $((SECONDS - start)) s"
    }
    # psi / rho: 40 epochs instead of 15, psi's hidden width 1024 instead of 256, pure L_MC (no regression term)
    # at temperature 0.05, on the mirrored train images (the heads embed the clean ones they trained on too
    # tightly): held-out sweeps (sweep_mc.py, sweep_merge.py --psi-grid, --view), benchmarks/README.md
    transform_options=(--epochs 40 --hidden 1024 --regression-weight 0 --temperature 0.05 --view flip)
    # psi + rho on the mirrored and the cropped train images (a row per image and view): rho then ends above
    # new/new, where on the mirrored ones alone it ends below; rho a residual MLP of width 512, not linear: 0.973
    # against 0.858 held out; L_MC at temperature 0.1, not psi's 0.05 (this --temperature comes after
    # transform_options' and wins): 1.046 against 0.973 held out, 0.976 against 0.922 with the new head on Lite2
    # (sweep_psi_views.py, benchmarks/README.md).
    rho_options=(--view flip+crop --rho-hidden 512 --temperature 0.1)
    ablation=(ablation/psi_mc_old ablation/psi_mc_new ablation/psi_mc_separate)
    stages=(all)
    # Two lanes of one process each. First each backbone's features (Lite0's lane also computes Lite2's
    # features of the small test split, then trains the homogeneous heads, while Lite2's lane is still
    # extracting); then psi / rho, the heterogeneous heads and the ablation. Step times of the from-scratch run
    # of 2026-11-28 (s): features Lite0 train 1305, Lite0 test 86, Lite2 test 119, Lite2 train 1693; heads
    # 48-93; gain predictors 23-24; psi 64-96 alone, 264-270 with rho (twice the rows); ablation 84-100. So each
    # part's lanes end within a few minutes of each other: 41.4 min in all.
    all_stage() {
      { features efficientnet_lite0 train clean+flip+crop; features efficientnet_lite0 test clean
        features efficientnet_lite2 test clean
        train old "$d/old.pt" --classes 50 "${lite0[@]}"
        train new "$d/new.pt" "${lite0[@]}"; train bct "$d/bct.pt" --old "$d/old.pt" "${lite0[@]}"
        gain_predictor "$d"; } & local lane=$!
      features efficientnet_lite2 train clean+flip+crop
      wait "$lane"
      # The old model is the same in both settings: the heterogeneous suite gets a copy of it.
      mkdir -p "$h"; [ -f "$h/old.pt" ] || { cp "$d/old.pt" "$h/old.pt"; cp "$d/old.json" "$h/old.json"; }
      transforms "$d" psi_regression psi_mc psi_mc_rho "${ablation[@]:0:2}" & lane=$!
      train new "$h/new.pt" "${lite2[@]}"; train bct "$h/bct.pt" --old "$h/old.pt" "${lite2[@]}"; gain_predictor "$h"
      transforms "$h" psi_regression psi_mc psi_mc_rho
      transforms "$d" "${ablation[2]}"  # by now the other lane has cached the homogeneous suite's features
      wait "$lane"
    }
    ablation_stage() { transforms "$d" "${ablation[@]}"; }
    ;;
  *) echo "unknown dataset $dataset" >&2; exit 2 ;;
esac
case "$stage" in
  all) for name in "${stages[@]}"; do "${name}_stage"; done ;;  # cifar100: all_stage
  *) declare -F "${stage}_stage" >/dev/null || {
       echo "unknown stage $stage ($(declare -F | sed -n 's/.* \(.*\)_stage$/\1/p' | tr '\n' ' ')or all)" >&2; exit 2; }
     "${stage}_stage" ;;
esac
