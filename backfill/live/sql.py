"""The SQL of the pgvector store: the schema, the job's conditional write and the one-statement searches.

Layout (schema ``backfill``), chosen so that a search reads only what it scores::

    gallery(id pk, label, ref, priority, predicted_gain, random_rank, backfilled, model, writes)
                                                                             the job's bookkeeping
    vec_old(id, label, backfilled, old vector(d_o))   partitioned by backfilled:
        vec_old_pending (false) | vec_old_done (true)                        old vectors, moved on backfill
    vec_new(id pk, label, new vector(d_n))                                   one row per backfilled item
    image(id pk, data bytea), progress(total, backfilled, models), meta(key pk, value jsonb)

An exact search is a sequential scan with one inner product per row, and its cost is the rows it visits: the
old side of ``full`` / ``rank_merge`` reads only the pending partition, the new side only ``vec_new``, each row
holding just (id, label, vector), instead of two scans of a wide table that holds both vectors per item.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

__all__ = ["schema_ddl", "WRITE_NEW", "UPGRADE_2_TO_3", "UPGRADE_3_TO_4", "search_sql", "search_settings",
           "exact_side_workers", "SEARCH_SPACES", "SEARCH_TAG"]

SCHEMA = "backfill"


def schema_ddl(d_old: int, d_new: int) -> list[str]:
    """The statements that create an empty gallery with ``d_old`` / ``d_new``-dim vectors."""
    return [
        f"CREATE SCHEMA {SCHEMA}",
        """CREATE TABLE backfill.gallery (
               id bigint PRIMARY KEY, label bigint NOT NULL, ref text NOT NULL,
               priority double precision NOT NULL, predicted_gain double precision, random_rank bigint NOT NULL,
               backfilled boolean NOT NULL DEFAULT false, model text, writes integer NOT NULL DEFAULT 0,
               CHECK (backfilled = (model IS NOT NULL)))
               WITH (fillfactor = 50)""",  # the job updates each row once: room on its page = a HOT update
        # Partitioned by the flag: flipping it moves the row, so the pending side is its own table.
        f"""CREATE TABLE backfill.vec_old (id bigint NOT NULL, label bigint NOT NULL,
               backfilled boolean NOT NULL DEFAULT false, old vector({int(d_old)}) NOT NULL)
               PARTITION BY LIST (backfilled)""",
        # Rows leave the pending partition as dead tuples: vacuum it sooner than the 20 % default.
        """CREATE TABLE backfill.vec_old_pending PARTITION OF backfill.vec_old FOR VALUES IN (false)
               WITH (autovacuum_vacuum_scale_factor = 0.05)""",
        "CREATE TABLE backfill.vec_old_done PARTITION OF backfill.vec_old FOR VALUES IN (true)",
        "ALTER TABLE backfill.vec_old_pending ADD PRIMARY KEY (id)",
        "ALTER TABLE backfill.vec_old_done ADD PRIMARY KEY (id)",
        f"""CREATE TABLE backfill.vec_new (id bigint PRIMARY KEY, label bigint NOT NULL,
               new vector({int(d_new)}) NOT NULL)""",
        "CREATE TABLE backfill.image (id bigint PRIMARY KEY, data bytea NOT NULL)",
        # models: those that wrote new vectors, kept here so that a status need not scan the gallery.
        """CREATE TABLE backfill.progress (one boolean PRIMARY KEY DEFAULT true CHECK (one),
               total bigint NOT NULL, backfilled bigint NOT NULL, models text[] NOT NULL DEFAULT '{}')""",
        "INSERT INTO backfill.progress (total, backfilled) VALUES (0, 0)",
        "CREATE TABLE backfill.meta (key text PRIMARY KEY, value jsonb NOT NULL)",
    ]


#: One batch of the job, one statement: flag the still-pending items in ``gallery`` (the row locks serialise
#: racing writers; a replayed batch matches nothing), move their old vectors to the done partition, insert
#: their new vectors and bump the progress row. Returns the counts of each part (equal unless corrupted).
#: Binary parameters (``%b``): in text, formatting and parsing 256 x 128 floats took about 0.4 s per batch on
#: the loaded benchmark machine, against 0.015 s in binary. The ``id = ANY(ids)`` conditions are redundant with
#: the joins but make PostgreSQL look the batch up by primary key: without them it hash-joined against a scan of
#: the whole table (every pending row, for each batch), a cost that grows with the gallery.
WRITE_NEW = """
    WITH v AS (SELECT * FROM unnest(%(ids)b::bigint[], %(vecs)b::vector[]) AS v(id, new)),
         u AS (UPDATE backfill.gallery g SET backfilled = true, model = %(model)s, writes = g.writes + 1
               FROM v WHERE g.id = v.id AND g.id = ANY(%(ids)b::bigint[]) AND NOT g.backfilled
               RETURNING g.id, g.label, v.new),
         o AS (UPDATE backfill.vec_old o SET backfilled = true FROM u
               WHERE o.id = u.id AND o.id = ANY(%(ids)b::bigint[]) AND NOT o.backfilled RETURNING o.id),
         n AS (INSERT INTO backfill.vec_new (id, label, new) SELECT id, label, new FROM u RETURNING id)
    UPDATE backfill.progress SET backfilled = backfilled + (SELECT count(*) FROM u),
           models = CASE WHEN EXISTS (SELECT FROM u) AND NOT %(model)s = ANY(models)
                         THEN array_append(models, %(model)s::text) ELSE models END
    RETURNING (SELECT count(*) FROM u), (SELECT count(*) FROM o), (SELECT count(*) FROM n)"""

#: Layout 2 -> 3 in place: the progress row gains the models that wrote new vectors (filled from the gallery
#: once). ALTER TABLE locks the table, and ``IF NOT EXISTS`` makes a second, racing upgrade a no-op.
UPGRADE_2_TO_3 = [
    "ALTER TABLE backfill.progress ADD COLUMN IF NOT EXISTS models text[] NOT NULL DEFAULT '{}'",
    """UPDATE backfill.progress SET models = ARRAY(
           SELECT DISTINCT model FROM backfill.gallery WHERE model IS NOT NULL ORDER BY 1)""",
    """INSERT INTO backfill.meta VALUES ('schema', '3') ON CONFLICT (key) DO UPDATE SET value = '3'""",
]

#: Layout 3 -> 4 in place: the gallery gains the ``predicted_gain`` order's column, NULL for the items loaded
#: before (the meta's ``orders`` stays without it: reload with a suite that has a gain predictor to use it).
UPGRADE_3_TO_4 = [
    "ALTER TABLE backfill.gallery ADD COLUMN IF NOT EXISTS predicted_gain double precision",
    """INSERT INTO backfill.meta VALUES ('schema', '4') ON CONFLICT (key) DO UPDATE SET value = '4'""",
]

#: The comment every search statement starts with: ``pg_stat_activity`` shows a connection's current or last
#: statement, so a job finds the searches running (or just run) on the server by it.
SEARCH_TAG = "/* backfill search */"

#: Per method: the sides merged, as (table and filter, vector column, query parameter, space).
SEARCH_SPACES = {
    "full": [("backfill.vec_new", "new", "qn", "new"), ("backfill.vec_old WHERE NOT backfilled", "old", "qo", "old")],
    "rank_merge": [("backfill.vec_new", "new", "qn", "new"),
                   ("backfill.vec_old WHERE NOT backfilled", "old", "qo", "old")],
    "old": [("backfill.vec_old", "old", "qo", "old")],
    "new_partial": [("backfill.vec_new", "new", "qn", "new")],
}


def search_sql(method: str, *, ann: Collection[str] = ()) -> str:
    """The one statement of a ``method`` search: each side's top-``%(k)s``, merged by raw score (ties by lower
    id, as the engine), with the progress of the same snapshot (also when the gallery is empty).

    ``ann``: the spaces (``"old"``, ``"new"``) whose side orders by the distance operator, the form an HNSW
    index can serve. The other sides are exact: they order by the score they select, so a row's inner product
    is computed once, and break ties by id.
    """
    parts = []
    for source, col, param, space in SEARCH_SPACES[method]:
        order = f"{col} <#> %({param})b" if space in ann else "score DESC, id"
        parts.append(f"(SELECT id, label, -({col} <#> %({param})b) AS score, '{space}' AS space FROM {source} "
                     f"ORDER BY {order} LIMIT %(k)s)")
    return (f"{SEARCH_TAG} SELECT p.backfilled, p.total, r.id, r.label, r.score, r.space FROM backfill.progress p "
            f"LEFT JOIN LATERAL ({' UNION ALL '.join(parts)}) r ON true ORDER BY r.score DESC, r.id LIMIT %(k)s")


def exact_side_workers(sizes: Mapping[str, int], ann: Collection[str], *, workers: int, min_rows: int) -> int:
    """Parallel workers for a search's exact sides: ``workers`` when one of them (``sizes`` = live rows per
    space, ``ann`` = the spaces searched by index) holds ``min_rows`` rows or more, else 0."""
    return workers if any(rows >= min_rows for space, rows in sizes.items() if space not in ann) else 0


def search_settings(*, ann: bool, k: int, ef_search: int, workers: int) -> dict[str, str]:
    """The settings of one search (set on its connection right before it).

    Exact sides: ``workers`` parallel workers per side; lower parallel costs than PostgreSQL's defaults, which
    would keep a side of a few 10,000 rows serial. ANN sides (``ann``): HNSW iterative scans (a side whose index
    still lists rows moved to the other partition, or a filter, would otherwise return fewer than k rows).
    """
    settings = {"max_parallel_workers_per_gather": str(max(int(workers), 0)), "parallel_setup_cost": "100",
                "parallel_tuple_cost": "0.01", "min_parallel_table_scan_size": "1MB"}
    if ann:
        settings |= {"hnsw.iterative_scan": "relaxed_order", "hnsw.ef_search": str(max(int(ef_search), int(k)))}
    return settings
