"""Live backfilling: a gallery in PostgreSQL + pgvector, a resumable Ray Data re-embedding job and a FastAPI
search service that answers with the online-backfilling methods while the job runs.

Needs the ``serve`` extra (``pip install -e ".[serve]"``). Modules: :mod:`.store` (the ``GalleryStore``
protocol, the pgvector store and the embedded server), :mod:`.gallery` (loading and exporting a gallery),
:mod:`.job` (the re-embedding job), :mod:`.service` (the HTTP API), :mod:`.cli` (``backfill gallery`` and
``backfill serve``), :mod:`.embedded` (the embedded server), :mod:`.sql` (schema and statements),
:mod:`.watch` (the app's Live gallery page). Nothing here is imported by the rest of the library.
"""
