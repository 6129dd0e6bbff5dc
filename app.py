"""Streamlit explorer for online backfilling: ``streamlit run app.py``.

Layout and widgets only; everything that computes lives in ``backfill.explorer`` and the figures in
``backfill.plots``. Environment variables (all optional):

* ``BACKFILL_CIFAR100``: default CIFAR-100 data directory (``train.npz``/``test.npz``/``classes.json``).
* ``BACKFILL_APP_MODELS``: Fashion-MNIST model directory instead of ``pretrained/fashion_mnist/<setting>``.
* ``BACKFILL_APP_PER_CLASS``: keep at most this many gallery images per class (quick demos, tests).
* ``BACKFILL_APP_CURVE_QUERIES``: leave-one-out queries per curve (default 2000; 0 = the whole gallery).
* ``BACKFILL_APP_CACHE``: on-disk cache of embeddings and curves (default ``~/.cache/backfill/app``;
  ``off`` disables it).
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from backfill import explorer as ex
from backfill import plots

st.set_page_config(page_title="Online backfilling explorer", page_icon="🔁", layout="wide")

DATASETS = {"fashion_mnist": "Fashion-MNIST (bundled)", "cifar100": "CIFAR-100"}
METRICS = {"map": "mAP", "top1": "Top-1"}


# ------------------------------------------------------------------------------------------ cached work
@st.cache_resource(show_spinner="Loading the models and the gallery...", max_entries=4)
def get_explorer(models_dir: str, data_root: str | None, per_class: int | None, curve_queries: int | None,
                 cache_dir: str | None) -> ex.Explorer:
    return ex.Explorer.from_directory(models_dir, data_root, per_class=per_class, curve_queries=curve_queries,
                                      cache_dir=cache_dir)


@st.cache_resource(show_spinner="Embedding the uploads...", max_entries=64)
def get_uploads(_explorer: ex.Explorer, explorer_key: str, files: tuple[tuple[str, bytes], ...]):
    return _explorer.upload_queries(files)


@st.cache_resource(show_spinner=False, max_entries=8)
def get_teaching_figures(_explorer: ex.Explorer, explorer_key: str):
    """The teaching figures and the cross-space order of each merge, built once (they do not depend on the
    widgets; st.plotly_chart only reads the figures, so sessions can share them)."""
    projection = _explorer.projection()
    distributions = _explorer.score_distributions()
    orders = ", ".join(f"{title.split(':')[0]} {ex.cross_space_order(panel):.0%}"
                       for title, panel in distributions.items())
    return (plots.projection_figure(projection["old_xy"], projection["new_xy"], projection["labels"],
                                    _explorer.class_names, projection["seen"]),
            plots.score_distribution_figure(distributions) if distributions else None, orders)


@st.cache_data(show_spinner=False, max_entries=8)
def get_samples(_explorer: ex.Explorer, explorer_key: str):
    ids = _explorer.sample_ids()
    return ids, [ex.thumbnail(_explorer.gallery.images[i], size=64) for i in ids]


def env_int(name: str, default: int | None = None) -> int | None:
    """Positive integer from the environment; ``0`` means None (no limit); unset or invalid: ``default``."""
    value = os.environ.get(name, "").strip()
    if not value.isdigit():
        return default
    return int(value) or None


def explorer_args() -> tuple:
    cache = os.environ.get("BACKFILL_APP_CACHE", str(ex.DEFAULT_CACHE_DIR)).strip()
    return (env_int("BACKFILL_APP_PER_CLASS"), env_int("BACKFILL_APP_CURVE_QUERIES", 2000),
            None if cache.lower() in ("", "0", "off", "none") else cache)


# ------------------------------------------------------------------------------------------ sidebar
def sidebar() -> dict:
    st.sidebar.header("Setup")
    dataset = st.sidebar.radio("Dataset", list(DATASETS), format_func=DATASETS.get, key="dataset")
    settings = ex.available_settings(dataset) or ["homogeneous"]
    setting = st.sidebar.selectbox("Setting", settings, key=f"setting_{dataset}",
                                   help="homogeneous: same architecture; heterogeneous: smaller old model")
    data_root = None
    if dataset == "cifar100":
        data_root = st.sidebar.text_input(
            "CIFAR-100 data directory", os.environ.get("BACKFILL_CIFAR100", ""), key="cifar_root",
            help="A folder with train.npz/test.npz/classes.json, or torchvision's cifar-100-python folder",
        ).strip() or None
        if st.sidebar.button("Download CIFAR-100 with torchvision", help="Needs internet (about 170 MB)"):
            with st.sidebar.status("Downloading CIFAR-100 ...") as status:
                try:
                    st.session_state["cifar_root"] = str(ex.download_cifar100())
                    status.update(label="Downloaded", state="complete")
                    st.rerun()
                except Exception as exc:  # noqa: BLE001 - no network, disk full...: say so, keep the page
                    status.update(label="Download failed", state="error")
                    st.sidebar.error(f"Download failed: {exc}")
    override = os.environ.get("BACKFILL_APP_MODELS") if dataset == "fashion_mnist" else None
    with st.sidebar.expander("Advanced"):
        models_dir = st.text_input("Model directory", override or str(ex.default_models_dir(dataset, setting)),
                                   key=f"models_{dataset}_{setting}")
    st.sidebar.header("Backfilling")
    order = st.sidebar.radio("Backfill order", ex.ORDERS, format_func=ex.ORDER_LABELS.get, key="order")
    k = st.sidebar.slider("Top-k shown", 1, 20, 8, key="k")
    return {"dataset": dataset, "data_root": data_root, "models_dir": models_dir, "order": order, "k": k}


def method_toggles(explorer: ex.Explorer) -> list[str]:
    available = [m.name for m in explorer.methods]
    st.sidebar.header("Methods")
    always = [m for m in ex.DEFAULT_METHODS if m in available]
    st.sidebar.caption("Always shown: " + ", ".join(explorer.label(m) for m in always))
    optional = [m for m in ex.OPTIONAL_METHODS
                if m in available and st.sidebar.toggle(explorer.label(m), key=f"show_{m}")]
    return always + optional


# ------------------------------------------------------------------------------------------ sections
def load(config: dict) -> ex.Explorer:
    name = DATASETS[config["dataset"]]
    if config["dataset"] == "cifar100" and not config["data_root"]:
        st.info("CIFAR-100 needs its data: enter its directory in the sidebar (or set BACKFILL_CIFAR100 "
                "before starting the app), or use **Download CIFAR-100 with torchvision** if you have internet.")
        st.stop()
    if not Path(config["models_dir"]).is_dir():
        st.error(f"No trained models for {name} in `{config['models_dir']}`. Train them with "
                 "`backfill train ...` (see the README) or pick another dataset or setting.")
        st.stop()
    try:
        return get_explorer(config["models_dir"], config["data_root"], *explorer_args())
    except (FileNotFoundError, ValueError) as exc:  # missing data, damaged or mismatched checkpoints
        st.error(f"Cannot load {name}: {exc}")
        st.stop()


def warm_up(explorer: ex.Explorer, order: str, methods: list[str]) -> None:
    if explorer.is_ready(order, methods):
        return
    with st.status("First run: embedding the gallery and evaluating the curves ...", expanded=True) as status:
        bar = st.progress(0.0)
        explorer.prepare(order, methods, progress=lambda f, message: bar.progress(min(f, 1.0), text=message))
        status.update(label="Ready: cached from now on", state="complete", expanded=False)


def select_sample(gallery_id: int) -> None:
    """Button callback (runs before the rerun, so the grid highlights the new choice at once)."""
    st.session_state["sample_id"] = gallery_id
    st.session_state["focus"] = f"sample:{gallery_id}"


def query_picker(explorer: ex.Explorer, key: str) -> list[ex.Query]:
    st.subheader("1. Pick a query")
    ids, thumbs = get_samples(explorer, key)
    if st.session_state.get("sample_key") != key:  # a new dataset: start from its first sample
        st.session_state["sample_key"], st.session_state["sample_id"] = key, int(ids[0])
    samples, upload = st.columns([3, 1], gap="medium")
    samples.caption("One click: a sample from the test split (it is left out of its own ranking).")
    names = explorer.class_names
    for column, gid, thumb in zip(samples.columns(len(ids), gap="small"), ids, thumbs, strict=True):
        column.image(thumb, width="stretch")
        column.button(names[explorer.gallery.labels[gid]], key=f"sample_{gid}", width="stretch", wrap=True,
                      type="primary" if st.session_state["sample_id"] == gid else "tertiary",
                      help=f"Query with test image #{gid}", on_click=select_sample, args=(int(gid),))
    uploaded = upload.file_uploader(
        f"Or upload images (up to {ex.MAX_UPLOAD_MB} MB each)", type=list(ex.UPLOAD_TYPES),
        accept_multiple_files=True, max_upload_size=ex.MAX_UPLOAD_MB, key="uploads",
        help="PNG, JPEG, WebP, BMP or GIF (first frame); any size and colour mode",
    )
    files = tuple((f.name, f.getvalue()) for f in uploaded or ())
    uploads, errors = get_uploads(explorer, key, files) if files else ([], [])
    for message in errors:
        upload.error(message)
    file_ids = tuple(f.file_id for f in uploaded or ())
    if file_ids != st.session_state.get("last_uploads"):  # new uploads: show the newest one
        st.session_state["last_uploads"] = file_ids
        if uploads:
            st.session_state["focus"] = uploads[-1].key
    return [explorer.gallery_query(st.session_state["sample_id"]), *uploads]


def query_header(explorer: ex.Explorer, queries: list[ex.Query]) -> ex.Query:
    by_key = {q.key: q for q in queries}
    if st.session_state.get("focus") not in by_key:
        st.session_state["focus"] = queries[0].key
    chosen = st.radio("Results for", list(by_key), format_func=lambda k: by_key[k].name, horizontal=True,
                      key="focus")
    query = by_key[chosen]
    left, right = st.columns([1, 5])
    left.image(ex.thumbnail(query.image, size=96))
    names = explorer.class_names
    if query.gallery_id is not None:
        right.markdown(f"**Query:** test image #{query.gallery_id}, class **{names[query.label]}**.")
        return query
    right.markdown(f"**Query:** uploaded `{query.name}`. The new model predicts **{names[query.predicted]}** "
                   f"({query.confidence:.0%}).")
    label = right.selectbox("Its true class (optional: enables the AP and green/red marking)",
                            [None, *range(len(names))], key=f"label_{query.key}",
                            format_func=lambda c: "unknown" if c is None else names[c])
    return query.with_label(label)


def results(explorer: ex.Explorer, query: ex.Query, methods: list[str], ratio: float, order: str,
            k: int) -> list[ex.MethodResult]:
    out = []
    for name in methods:
        result = explorer.search(query, name, ratio, order, k)
        out.append(result)
        ap = "" if result.ap is None else f" · AP **{result.ap:.3f}**"
        st.markdown(f"**{result.label}**{ap} · can reach {result.n_reachable:,} gallery items")
        if not result.hits:
            st.caption(f"{result.label}: nothing reachable yet - no image has been re-embedded.")
            continue
        st.image([explorer.hit_thumbnail(h, size=64) for h in result.hits],
                 caption=[f"#{h.rank} · {h.score:.3f}" for h in result.hits])
    st.caption("Frame: green = same class as the query, red = another class (grey: the query's class is "
               "unknown). Badge: the space the score came from - blue **new** (item already re-embedded), "
               "orange **old**. Number: cosine similarity.")
    return out


def metrics_and_curves(explorer: ex.Explorer, methods: list[str], order: str, ratio: float):
    rows = explorer.summary(methods, order, ratio)
    main = next((r for r in rows if r["method"] == "full"), rows[-1])
    c1, c2, c3 = st.columns(3)
    c1.metric(f"mAP now ({main['label'].split(' (')[0]})", f"{main['map']:.1%}",
              f"{main['vs_naive'] * 100:+.1f} vs naive")
    c2.metric("AUC-mAP", f"{main['auc_map']:.1%}", help="Mean mAP over the curve's 21 points (0-100%)")
    c3.metric("Relative gain", f"{main['relative_gain']:.0%}",
              help="(AUC-mAP - old/old) / (new/new - old/old): the share of the new model's gain delivered "
                   "during backfilling")
    st.caption(" · ".join(f"{r['label']}: mAP {r['map']:.1%}, top-1 {r['top1']:.1%}" for r in rows))
    st.dataframe(
        [{"method": r["label"], "mAP now": round(100 * r["map"], 1), "top-1 now": round(100 * r["top1"], 1),
          "AUC-mAP": round(100 * r["auc_map"], 1), "AUC-top1": round(100 * r["auc_top1"], 1),
          "rel. gain %": round(100 * r["relative_gain"], 1), "vs naive": round(100 * r["vs_naive"], 1)}
         for r in rows],
        hide_index=True,
    )
    refs = explorer.references(order)
    labels = {m: explorer.label(m) for m in methods}
    series = {metric: {m: explorer.curve(m, order).values[metric] for m in methods} for metric in METRICS}
    for tab, metric in zip(st.tabs(list(METRICS.values())), METRICS, strict=True):
        fig = plots.curve_figure(explorer.points, series[metric], labels=labels, references=refs[metric],
                                 ratio=ratio, metric=metric)
        tab.plotly_chart(fig, key=f"chart_{metric}", config={"displaylogo": False})
    st.caption(f"Curves: {len(explorer.curve_query_ids):,} leave-one-out queries against all "
               f"{len(explorer.gallery):,} gallery images, {ex.ORDER_LABELS[order]} order.")
    return series["map"], refs["map"], labels


def downloads(explorer: ex.Explorer, shown, ratio: float, order: str, series, refs, labels) -> None:
    c1, c2, c3 = st.columns(3)
    c1.download_button("Results (CSV)", lambda: explorer.results_csv(shown, ratio, order),
                       file_name="backfill_results.csv", mime="text/csv", on_click="ignore")
    c2.download_button("Curves (HTML)", lambda: plots.figure_html(plots.curve_figure(
        explorer.points, series, labels=labels, references=refs, ratio=ratio)),
        file_name="backfill_curves.html", mime="text/html", on_click="ignore")
    c3.download_button("Curves (PNG)", lambda: plots.curves_png(
        explorer.points, series, labels=labels, references=refs, ratio=ratio),
        file_name="backfill_curves.png", mime="image/png", on_click="ignore")


HOW_IT_WORKS = """
**Backfilling.** A search service stores one embedding per gallery image, computed by an *old* model. When a
better *new* model arrives, every gallery image must be re-embedded ("backfilled") - days of compute for a
large gallery - while queries keep coming. Meanwhile the gallery is mixed: a growing re-embedded part with new
embeddings, the rest with old ones. The slider is that progress.

**Strategies.**
* **Naive (new-partial)**: query with the new model, search only the re-embedded part. Right at 100%,
  blind to most of the gallery before.
* **Rank merge**: query with *both* models (two forward passes), search the old part with the old query and
  the new part with the new query, merge by raw score. Training-free, but the two spaces' scores are not on
  one scale (left panel below), so a mediocre match in one space can outrank a good one in the other.
* **RT merge**: a small network ψ maps the new query into the old space, so one new-model pass serves both
  parts and the old model can be retired on day one.
* **Full (metric-compatible)**: ψ is trained with a contrastive loss whose single denominator pools the
  negatives of *both* spaces, so a positive in either space scores above the negatives of either space: the
  merged ranking becomes meaningful (right panel: same-class scores of both spaces sit right of the
  other-class ones).
* **Order**: which images to re-embed first. *Deployable* uses only the stored old embeddings: the images
  the old model's classifier is least sure about go first (FastFill's idea); *oracle* peeks at the new
  embeddings and labels, to show the headroom.
"""


def teaching(explorer: ex.Explorer, key: str) -> None:
    with st.expander("How it works", expanded=False):
        st.markdown(HOW_IT_WORKS)
        projection, distributions, cross_orders = get_teaching_figures(explorer, key)
        st.plotly_chart(projection, key="projection")
        st.caption("The same test images in both spaces (2-D PCA of each). Crosses: classes the old model "
                   "never saw; its space mixes them, the new one separates them.")
        if distributions is not None:
            st.plotly_chart(distributions, key="scores")
            st.caption("Scores of same-class (solid) and other-class (dashed) pairs, in the old space (orange: "
                       "scored with the query each method sends there) and the new space (blue). Cross-space "
                       "order - how often a same-class pair of one space outscores an other-class pair of the "
                       "other, 100% = perfectly calibrated: " + cross_orders + ".")


# ------------------------------------------------------------------------------------------ page
def main() -> None:
    st.title("Online backfilling explorer")
    st.caption("Search a gallery that is being re-embedded with a new model, without losing quality on the way "
               "(Seo et al., *Online Backfilling with No Regret for Large-Scale Image Retrieval*, 2023).")
    config = sidebar()
    explorer = load(config)
    key = f"{config['models_dir']}|{config['data_root']}|{explorer_args()}"
    methods = method_toggles(explorer)
    order = config["order"]
    warm_up(explorer, order, methods)
    queries = query_picker(explorer, key)

    st.subheader("2. Backfill")
    step = int(round(explorer.step_percent)) if float(explorer.step_percent).is_integer() else 5
    percent = st.slider("Re-embedded with the new model (%)", 0, 100, 50, step=step, key="percent")
    ratio = percent / 100.0

    left, right = st.columns([3, 2], gap="large")
    with left:
        query = query_header(explorer, queries)
        shown = [(query, results(explorer, query, methods, ratio, order, config["k"]))]
    with right:
        st.markdown(f"**At {percent}% re-embedded**")
        series, refs, labels = metrics_and_curves(explorer, methods, order, ratio)
        downloads(explorer, shown, ratio, order, series, refs, labels)
    teaching(explorer, key)


main()
