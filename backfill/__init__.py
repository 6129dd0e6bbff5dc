"""backfill: online backfilling for image retrieval (Seo et al., 2023), reference implementation."""

__version__ = "0.1.0"
