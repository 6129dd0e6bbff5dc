"""Streamlit explorer for online backfilling: ``streamlit run app.py``.

Layout and widgets only: the computing lives in ``backfill.explorer``, the charts in ``backfill.plots`` and
the prose in ``backfill/explorer/*.md``. The heavy work (gallery embeddings, curves) runs in the explorer's
background worker: the page shows what is ready and the progress of the rest. Environment variables (all
optional):

* ``BACKFILL_CIFAR100``: default CIFAR-100 data directory (``train.npz``/``test.npz``/``classes.json``).
* ``BACKFILL_APP_MODELS``: Fashion-MNIST model directory instead of ``pretrained/fashion_mnist/<setting>``.
* ``BACKFILL_APP_PER_CLASS``: keep at most this many gallery images per class (quick demos, tests).
* ``BACKFILL_APP_CURVE_QUERIES``: leave-one-out queries per curve (default 2000; 0 = the whole gallery).
* ``BACKFILL_APP_CACHE``: on-disk cache of embeddings and curves (default ``~/.cache/backfill/app``;
  ``off`` disables it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import streamlit as st

from backfill import explorer as ex
from backfill import plots
from backfill.datasets import DatasetNotFoundError
from backfill.methods import get_method, get_order

st.set_page_config(page_title="Online backfilling explorer", page_icon="🔁", layout="wide")

DATASETS = {"fashion_mnist": "Fashion-MNIST (bundled)", "cifar100": "CIFAR-100"}
METRICS = {"map": "mAP", "top1": "Top-1"}
# The presenter tour: step -> (button, slider %, order, methods switched on); its sentences are tour.md.
TOUR = {"before": ("1 · Before", 0, "random", ("old",)), "naive": ("2 · Naive 30%", 30, "random", ()),
        "rank_merge": ("3 · Rank merge", 30, "random", ()), "full": ("4 · Full method", 30, "random", ())}


# ------------------------------------------------------------------------------------------ cached work
@st.cache_resource(show_spinner="Loading the models and the gallery...", max_entries=4)
def get_explorer(models_dir: str, data_root: str | None, per_class: int | None, curve_queries: int | None,
                 cache_dir: str | None) -> ex.Explorer:
    return ex.Explorer.from_directory(models_dir, data_root, per_class=per_class, curve_queries=curve_queries,
                                      cache_dir=cache_dir)


@st.cache_resource(show_spinner="Embedding the uploads...", max_entries=64)
def get_uploads(_explorer: ex.Explorer, explorer_key: str, files: tuple[tuple[str, bytes], ...]):
    return ex.upload_queries(_explorer, files)


@st.cache_resource(show_spinner=False, max_entries=8)
def get_teaching_figures(_explorer: ex.Explorer, explorer_key: str):
    """The teaching figures and each merge's cross-space order, built once (they ignore the widgets)."""
    projection = ex.projection(_explorer)
    panels = ex.score_distributions(_explorer)
    titles = [_explorer.label(p.method) if p.method in {m.name for m in _explorer.methods}
              else get_method(p.method).label for p in panels]
    orders = ", ".join(f"{get_method(p.method).short_label} {ex.cross_space_order(p):.0%}" for p in panels)
    return (plots.projection_figure(projection.old_xy, projection.new_xy, projection.labels,
                                    _explorer.class_names, projection.seen),
            plots.score_distribution_figure(panels, titles) if panels else None, orders)


@st.cache_resource(show_spinner=False, max_entries=8)
def get_samples(_explorer: ex.Explorer, explorer_key: str):
    ids = _explorer.sample_ids()
    return ids, [ex.thumbnail(_explorer.image(i), size=64) for i in ids]


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


# ------------------------------------------------------------------------------------------ shared state
WIDGET_DEFAULTS = {"dataset": "fashion_mnist", "order": "random", "percent": 50, "k": 8}


def restore_from_url() -> None:
    """On a session's first run, seed the widgets from the link (``?dataset=...&order=...&p=30``).

    On later runs, only put back a default that went missing, so that a widget whose state Streamlit dropped
    shows the page's default rather than its own minimum (a top-k of 1).
    """
    if st.session_state.get("_restored"):
        for key, default in WIDGET_DEFAULTS.items():
            st.session_state.setdefault(key, default)
        return
    st.session_state["_restored"] = True
    params, state = st.query_params, st.session_state
    dataset = params.get("dataset", "")
    state.setdefault("dataset", dataset if dataset in DATASETS else WIDGET_DEFAULTS["dataset"])
    if params.get("setting") in ex.available_settings(state["dataset"]):
        state.setdefault(f"setting_{state['dataset']}", params["setting"])
    order = params.get("order", "")
    state.setdefault("order", order if order in ex.APP_ORDERS else WIDGET_DEFAULTS["order"])
    for key, param, low, high in (("percent", "p", 0, 100), ("k", "k", 1, 20)):
        value = params.get(param, "")
        state.setdefault(key, int(value) if value.isdigit() and low <= int(value) <= high else WIDGET_DEFAULTS[key])
    if params.get("sample", "").isdigit():
        state["url_sample"] = int(params["sample"])


def share_in_url(config: dict) -> None:
    st.query_params.from_dict({"dataset": config["dataset"], "setting": config["setting"], "order": config["order"],
                               "p": str(st.session_state["percent"]), "k": str(config["k"]),
                               "sample": str(st.session_state.get("sample_id", ""))})


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
    models_dir = st.sidebar.expander("Advanced").text_input(
        "Model directory", override or str(ex.default_models_dir(dataset, setting)), key=f"models_{dataset}_{setting}")
    st.sidebar.header("Backfilling")
    orders = ex.available_orders(models_dir)
    if st.session_state.get("order") not in orders:  # e.g. predicted_gain, then a suite without its predictor
        st.session_state["order"] = WIDGET_DEFAULTS["order"]
    order = st.sidebar.radio("Backfill order", orders, format_func=lambda o: get_order(o).label, key="order",
                             help="Which gallery items the backfill re-embeds first. The deployable ones need only "
                                  "the stored old embeddings; the oracle peeks at the new ones.")
    k = st.sidebar.slider("Top-k shown", 1, 20, key="k")
    return {"dataset": dataset, "setting": setting, "data_root": data_root, "models_dir": models_dir,
            "order": order, "k": k}


def method_toggles(explorer: ex.Explorer) -> list[str]:
    available = [m.name for m in explorer.methods]
    st.sidebar.header("Methods")
    always = [m for m in ex.DEFAULT_METHODS if m in available]
    st.sidebar.caption("Always shown: " + ", ".join(explorer.label(m) for m in always))
    optional = [m for m in ex.OPTIONAL_METHODS
                if m in available and st.sidebar.toggle(explorer.label(m), key=f"show_{m}")]
    return always + optional


# ------------------------------------------------------------------------------------------ loading
def load(config: dict) -> ex.Explorer:
    name = DATASETS[config["dataset"]]
    if config["dataset"] == "cifar100" and not config["data_root"]:
        st.info("CIFAR-100 needs its data: enter its folder in **CIFAR-100 data directory** in the sidebar, or "
                "press **Download CIFAR-100 with torchvision** there if this machine has internet.")
        st.stop()
    if not Path(config["models_dir"]).is_dir():
        st.error(f"No trained models for {name} in `{config['models_dir']}`: pick another **Setting** in the "
                 "sidebar, or put a folder with old.pt and new.pt in **Advanced → Model directory**.")
        st.stop()
    try:
        return get_explorer(config["models_dir"], config["data_root"], *explorer_args())
    except DatasetNotFoundError:
        st.error(f"{name} was not found in `{config['data_root']}`: set **CIFAR-100 data directory** to a folder "
                 "with test.npz and classes.json (or torchvision's cifar-100-python), or press **Download "
                 "CIFAR-100 with torchvision**.")
        st.stop()
    except (FileNotFoundError, ValueError) as exc:  # damaged or mismatched checkpoints
        st.error(f"Cannot load {name}: {exc}")
        st.stop()


def wait_for_gallery(explorer: ex.Explorer) -> None:
    """Cold start: show the embedding's progress (the worker embeds; a widget change ends this loop)."""
    if explorer.has_embeddings:
        return
    with st.status("Embedding the gallery (once: cached on disk afterwards) ...", expanded=True) as status:
        bar = st.progress(0.0)
        while not explorer.has_embeddings:
            if ("embeddings",) in explorer.worker.errors:
                st.error(f"Embedding the gallery failed: {explorer.worker.errors[('embeddings',)]}")
                st.stop()
            fraction, message = explorer.embedding_progress
            bar.progress(fraction, text=message)
            time.sleep(0.2)
        status.update(label="Gallery embedded", state="complete", expanded=False)


def wait_for_curves(explorer: ex.Explorer, order: str, methods: list[str], slot) -> None:
    """Until the worker has the curves: their progress in ``slot`` (returns at once when they are ready).

    A loop at the end of the script, rather than a ``run_every`` fragment that reruns the app when done: a
    widget change simply interrupts the loop, whereas the fragment's timed reruns could preempt the run an
    upload started (the upload then showed partial results and the sidebar's top-k fell back to 1).
    """
    needed = list(dict.fromkeys([*ex.REFERENCE_METHODS, *methods]))
    while pending := explorer.pending(order, methods):
        failed = [explorer.worker.errors[key] for key in (("curve", order, m) for m in pending)
                  if key in explorer.worker.errors]
        if failed:
            slot.error(f"Evaluating the curves failed: {failed[0]}")
            st.stop()
        done = len(needed) - len(pending)
        slot.progress(done / len(needed), text=f"Evaluating the curves ({get_order(order).label}): {done} of "
                                               f"{len(needed)} ready, next {explorer.label(pending[0])}. The "
                                               "results on the left are live meanwhile.")
        time.sleep(0.25)


# ------------------------------------------------------------------------------------------ sections
def tour() -> None:
    steps = ex.sections(ex.prose("tour"))
    with st.expander("Presenter tour: four steps, one click each", expanded="tour" in st.session_state):
        for column, (step, (label, *_)) in zip(st.columns(len(TOUR)), TOUR.items(), strict=True):
            column.button(label, key=f"tour_{step}", on_click=start_step, args=(step,), width="stretch",
                          type="primary" if st.session_state.get("tour") == step else "secondary")
        if st.session_state.get("tour") in steps:
            st.markdown(steps[st.session_state["tour"]])


def start_step(step: str) -> None:
    """Tour button callback: put the page in the step's state before the rerun."""
    _, percent, order, extra = TOUR[step]
    st.session_state.update({"tour": step, "percent": percent, "order": order})
    for name in ex.OPTIONAL_METHODS:
        st.session_state[f"show_{name}"] = name in extra


def select_sample(gallery_id: int) -> None:
    """Button callback (runs before the rerun, so the grid highlights the new choice at once)."""
    st.session_state["sample_id"] = gallery_id
    st.session_state["focus"] = f"sample:{gallery_id}"


def query_picker(explorer: ex.Explorer, key: str) -> list[ex.Query]:
    st.subheader("1. Pick a query")
    st.caption(ex.gallery_blurb(explorer))
    ids, thumbs = get_samples(explorer, key)
    if st.session_state.get("sample_key") != key:  # a new dataset: its first sample (or the link's)
        wanted = st.session_state.pop("url_sample", None)
        st.session_state["sample_key"] = key
        st.session_state["sample_id"] = wanted if wanted in set(ids.tolist()) else int(ids[0])
    samples, upload = st.columns([3, 1], gap="medium")
    samples.caption("One click: a sample from the test split (it is left out of its own ranking).")
    per_row = 5
    for row in range(0, len(ids), per_row):
        for column, gid, thumb in zip(samples.columns(per_row, gap="small"), ids[row:row + per_row],
                                      thumbs[row:row + per_row], strict=False):
            column.image(thumb, width=64)
            column.button(explorer.class_name(gid), key=f"sample_{gid}", width="stretch",
                          type="primary" if st.session_state["sample_id"] == gid else "tertiary",
                          help=f"Query with test image #{gid}", on_click=select_sample, args=(int(gid),))
    uploaded = upload.file_uploader(f"Or upload images (up to {ex.MAX_UPLOAD_MB} MB each)", type=list(ex.UPLOAD_TYPES),
                                    accept_multiple_files=True, max_upload_size=ex.MAX_UPLOAD_MB, key="uploads",
                                    help="PNG, JPEG, WebP, BMP or GIF (first frame); any size and colour mode")
    files = tuple((f.name, f.getvalue()) for f in uploaded or ())
    uploads, errors = get_uploads(explorer, key, files) if files else ([], [])
    for message in errors:
        upload.error(message)
    file_ids = tuple(f.file_id for f in uploaded or ())
    if file_ids != st.session_state.get("last_uploads"):  # new uploads: show the newest one
        st.session_state["last_uploads"] = file_ids
        if uploads:
            st.session_state["focus"] = uploads[-1].key
    return [ex.gallery_query(explorer, st.session_state["sample_id"]), *uploads]


def query_header(explorer: ex.Explorer, queries: list[ex.Query]) -> ex.Query:
    by_key = {q.key: q for q in queries}
    if st.session_state.get("focus") not in by_key:
        st.session_state["focus"] = queries[0].key
    chosen = st.radio("Results for", list(by_key), format_func=lambda k: by_key[k].name, horizontal=True,
                      key="focus")
    query = by_key[chosen]
    names = explorer.class_names
    if query.gallery_id is not None:
        left, right = st.columns([1, 5])
        left.image(ex.thumbnail(query.image, size=96))
        right.markdown(f"**Query:** test image #{query.gallery_id}, class **{names[query.label]}**.")
        return query
    original, seen, right = st.columns([1, 1, 4])
    original.image(ex.thumbnail(query.image, size=96), caption="uploaded")
    seen.image(ex.thumbnail(query.model_image, size=96), caption="as the models see it")
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
        result = ex.search(explorer, query, name, ratio, order, k)
        out.append(result)
        ap = "" if result.ap is None else f" · AP **{result.ap:.3f}**"
        st.markdown(f"**{result.label}**{ap} · can reach {result.n_reachable:,} gallery items")
        if not result.hits:
            st.caption(f"{result.label}: nothing reachable yet - no image has been re-embedded.")
            continue
        st.image([ex.hit_thumbnail(explorer, h, size=64) for h in result.hits], width=56,
                 caption=[f"#{h.rank} {h.score:.2f}" for h in result.hits])
    st.caption("Frame: green = same class as the query, red = another class (grey: the query's class is "
               "unknown). Badge: the space the score came from - blue **new** (item already re-embedded), "
               "orange **old**. Number: rank and cosine similarity.")
    return out


def headline(explorer: ex.Explorer, methods: list[str], order: str, ratio: float) -> list[ex.SummaryRow]:
    rows = explorer.summary(methods, order, ratio)
    main = next((r for r in rows if r.method.name == "full"), rows[-1])
    c1, c2, c3 = st.columns(3)
    c1.metric(f"mAP now ({main.method.short_label})", f"{main.map:.1%}", f"{main.vs_naive * 100:+.1f} vs naive")
    c2.metric("AUC-mAP", f"{main.auc_map:.1%}", help="Mean mAP over the curve's 21 points (0-100%)")
    c3.metric("Relative gain", f"{main.relative_gain:.0%}",
              help="(AUC-mAP - old/old) / (new/new - old/old): the share of the new model's gain delivered "
                   "during backfilling")
    return rows


def curves(explorer: ex.Explorer, methods: list[str], order: str, ratio: float):
    refs = explorer.references(order)
    labels = {m: explorer.label(m) for m in methods}
    series = {metric: {m: explorer.curve(m, order).values[metric] for m in methods} for metric in METRICS}
    for tab, metric in zip(st.tabs(list(METRICS.values())), METRICS, strict=True):
        fig = plots.curve_figure(explorer.points, series[metric], labels=labels, references=refs[metric],
                                 ratio=ratio, metric=metric)
        tab.plotly_chart(fig, key=f"chart_{metric}", config={"displaylogo": False})
    st.caption(f"Curves: {len(explorer.curve_query_ids):,} leave-one-out queries against all "
               f"{explorer.gallery_size:,} gallery images, {get_order(order).label} order.")
    return series["map"], refs["map"], labels


def table(rows: list[ex.SummaryRow]) -> None:
    st.caption(" · ".join(f"{r.method.label}: mAP {r.map:.1%}, top-1 {r.top1:.1%}" for r in rows))
    st.table([{"method": r.method.short_label, "mAP now": f"{100 * r.map:.1f}", "top-1 now": f"{100 * r.top1:.1f}",
               "AUC-mAP": f"{100 * r.auc_map:.1f}", "AUC-top1": f"{100 * r.auc_top1:.1f}",
               "rel. gain %": f"{100 * r.relative_gain:.1f}", "vs naive": f"{100 * r.vs_naive:+.1f}"}
              for r in rows])


def downloads(explorer: ex.Explorer, shown, ratio: float, order: str, series, refs, labels) -> None:
    c1, c2, c3 = st.columns(3)
    c1.download_button("Results (CSV)", lambda: ex.results_csv(shown, ratio, order, explorer.class_names),
                       file_name="backfill_results.csv", mime="text/csv", on_click="ignore", width="stretch")
    c2.download_button("Curves (HTML)", lambda: plots.figure_html(plots.curve_figure(
        explorer.points, series, labels=labels, references=refs, ratio=ratio)),
        file_name="backfill_curves.html", mime="text/html", on_click="ignore", width="stretch")
    c3.download_button("Curves (PNG)", lambda: plots.curves_png(
        explorer.points, series, labels=labels, references=refs, ratio=ratio),
        file_name="backfill_curves.png", mime="image/png", on_click="ignore", width="stretch")


def teaching(explorer: ex.Explorer, key: str) -> None:
    with st.expander("How it works", expanded=False):
        st.markdown(ex.prose("how_it_works"))
        for method in explorer.methods:
            text, picture = st.columns([3, 2])
            text.markdown(ex.method_card(method))
            picture.image(ex.method_diagram(method), width="stretch")
        st.markdown(ex.prose("orders"))
        projection, distributions, cross_orders = get_teaching_figures(explorer, key)
        captions = ex.sections(ex.prose("pictures"))
        st.plotly_chart(projection, key="projection")
        st.caption(captions["projection"])
        if distributions is not None:
            st.plotly_chart(distributions, key="scores")
            st.caption(f"{captions['scores']} {cross_orders}.")


# ------------------------------------------------------------------------------------------ page
def main() -> None:
    restore_from_url()
    st.title("Online backfilling explorer")
    st.caption("Search a gallery that is being re-embedded with a new model, without losing quality on the way "
               "(Seo et al., *Online Backfilling with No Regret for Large-Scale Image Retrieval*, 2023).")
    config = sidebar()
    explorer = load(config)
    key = f"{config['models_dir']}|{config['data_root']}|{explorer_args()}"
    methods = method_toggles(explorer)
    order = config["order"]
    explorer.prefetch(order, methods)
    tour()
    wait_for_gallery(explorer)
    queries = query_picker(explorer, key)

    st.subheader("2. Backfill")
    step = max(1, int(round(explorer.step_percent)))
    percent = st.slider("Re-embedded with the new model (%)", 0, 100, step=step, key="percent")
    ratio = percent / 100.0
    share_in_url(config)
    st.markdown(f"**At {percent}% re-embedded**")
    headline_slot = st.container()
    left, right = st.columns([3, 2], gap="large")
    with left:
        query = query_header(explorer, queries)
        shown = [(query, results(explorer, query, methods, ratio, order, config["k"]))]
    chart_slot, table_slot = right.empty(), st.container()
    teaching(explorer, key)
    # The curves come last, into the slots above: the rest of the page is live while the worker computes them.
    wait_for_curves(explorer, order, methods, chart_slot)
    with headline_slot:
        rows = headline(explorer, methods, order, ratio)
    with chart_slot.container():
        series, refs, labels = curves(explorer, methods, order, ratio)
    with table_slot:
        table(rows)
        downloads(explorer, shown, ratio, order, series, refs, labels)


main()
