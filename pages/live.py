"""Streamlit page: watch a live gallery store while the backfill job runs, and search it.

A page of the app's sidebar (Streamlit multipage, next to app.py); the simulated explorer stays in app.py.
Layout only: the store, suite and search calls are in :mod:`backfill.live.watch`.
"""

from __future__ import annotations

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
    first, meta = watch.status(store), store.meta()
except StoreError as exc:
    st.error(str(exc))
    st.stop()

auto = st.toggle("Refresh while a job runs", value=True, help=f"every {REFRESH_S:g} s")


@st.fragment(run_every=REFRESH_S if auto and first["job_running"] else None)
def status_panel() -> None:
    """Progress of the store; reruns on its own while a job runs."""
    try:
        s = watch.status(store)
    except StoreError as exc:
        st.error(str(exc))
        return
    st.progress(s["ratio"], text=f"{s['backfilled']:,} / {s['total']:,} backfilled ({100 * s['ratio']:.1f}%)")
    cols = st.columns(4)
    cols[0].metric("items", f"{s['total']:,}")
    cols[1].metric("backfilled", f"{s['backfilled']:,}")
    cols[2].metric("job", "running" if s["job_running"] else "idle")
    cols[3].metric("new model", ", ".join(s["models"]) or "-")
    if s["job_running"] != first["job_running"]:
        st.rerun()  # a job started or ended: the whole page reruns (and starts or stops refreshing)


status_panel()

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

if st.button("Search", type="primary"):
    try:
        suite = watch.load_suite(suite_dir.strip())
        watch.check(store, suite)
        if item is not None:
            image = watch.sample(store, int(item))
        elif upload is None:
            st.warning("Upload a query image first.")
            st.stop()
        else:
            image = upload.getvalue()
        result = watch.search(store, suite, image, method=method, k=k)
    except ImageLoadError as exc:
        st.error(f"{getattr(upload, 'name', 'image')}: {exc}")
        st.stop()
    except StoreError as exc:
        st.error(str(exc))
        st.stop()
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
