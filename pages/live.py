"""Streamlit page: watch a live gallery store while the backfill job runs, and search it.

A page of the app's sidebar (Streamlit multipage, next to app.py); the simulated explorer stays in app.py.
Layout only: the store, suite and search calls are in :mod:`backfill.live.watch`.
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from backfill.images import ImageLoadError
from backfill.live import watch
from backfill.live.store import StoreError

REFRESH_S = 2.0

st.title("Live gallery")
st.caption("A gallery in PostgreSQL + pgvector being re-embedded by `backfill gallery backfill`: its progress, "
           "and searches against it with the online-backfilling methods.")

location = st.text_input("Store", value=watch.default_store(), placeholder="gal/  or  postgresql://user@host/db",
                         help=f"a store directory (embedded PostgreSQL) or a postgresql:// URI; default "
                              f"${watch.STORE_ENV}")
if not location.strip():
    st.info("Enter a store location (`backfill gallery load --store ...` creates one).")
    st.stop()
try:
    store = watch.open_watched(location.strip())
    current, meta = watch.status(store), store.meta()
except StoreError as exc:
    st.error(str(exc))
    st.stop()

auto = st.toggle("Refresh while a job runs", value=True, key="refresh", help=f"every {REFRESH_S:g} s")
status_slot = st.empty()


def show_status(s: dict) -> None:
    """The store's progress, drawn into ``status_slot`` (again on every refresh)."""
    with status_slot.container():
        st.progress(s["ratio"], text=f"{s['backfilled']:,} / {s['total']:,} backfilled ({100 * s['ratio']:.1f}%)")
        cols = st.columns(4)
        cols[0].metric("items", f"{s['total']:,}")
        cols[1].metric("backfilled", f"{s['backfilled']:,}")
        cols[2].metric("job", "running" if s["job_running"] else "idle")
        cols[3].metric("new model", ", ".join(s["models"]) or "-")


show_status(current)

st.subheader("Search the live store")
suite_dir = st.text_input("Suite", value=watch.default_suite(meta),
                          help=f"the model suite directory (default ${watch.SUITE_ENV}, else the one the gallery "
                               f"was loaded with)")
left, right = st.columns(2)
source = left.radio("Query", ["gallery item", "upload"], horizontal=True)
if source == "gallery item":
    item = left.number_input("Item id", min_value=0, value=0, step=1)
    upload = None
else:
    item = None
    upload = left.file_uploader("Query image", type=["png", "jpg", "jpeg", "webp", "bmp", "gif"])
method = right.selectbox("Method", watch.METHODS,
                         help="full: new query on backfilled items, psi(new query) on the rest; rank_merge: old "
                              "and new queries; old: old model only; new_partial: backfilled items only")
k = right.slider("k", 1, 50, 10)


def search_results() -> None:
    """The results of a Search click (errors in one line; it returns rather than stopping the script, so that
    the loop at the end goes on refreshing the status)."""
    try:
        suite = watch.load_suite(suite_dir.strip())
        watch.check(store, suite)
        if item is not None:
            image = watch.sample(store, int(item))
        elif upload is None:
            st.warning("Upload a query image first.")
            return
        else:
            image = upload.getvalue()
        result = watch.search(store, suite, image, method=method, k=k)
    except ImageLoadError as exc:
        st.error(f"{getattr(upload, 'name', 'image')}: {exc}")
        return
    except StoreError as exc:
        st.error(str(exc))
        return
    st.image(image, caption="query", width=96)
    st.caption(f"{len(result.hits)} results at {result.backfilled:,} / {result.total:,} backfilled "
               f"(one snapshot); score = inner product in the space shown")
    thumbs = watch.thumbnails(store, [h.id for h in result.hits])
    per_row = 5
    for start in range(0, len(result.hits), per_row):
        for col, hit in zip(st.columns(per_row), result.hits[start:start + per_row], strict=False):
            if hit.id in thumbs:
                col.image(thumbs[hit.id], width=96)
            col.caption(f"#{hit.id} · label {hit.label} · {hit.score:.3f} · {hit.space}")
    st.dataframe(pd.DataFrame([{"id": h.id, "label": h.label, "score": h.score, "space": h.space}
                               for h in result.hits]), hide_index=True)


if st.button("Search", type="primary"):
    search_results()

# Last, while a job runs: refresh the status in place. A loop at the end of the script rather than a
# ``run_every`` fragment, whose timed reruns can race the run an upload or a click starts; a widget change
# simply interrupts the loop (and the new run starts it again).
while auto and current["job_running"]:
    time.sleep(REFRESH_S)
    try:
        current = watch.status(store)
    except StoreError as exc:
        status_slot.error(str(exc))
        break
    show_status(current)
