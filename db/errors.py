"""User-facing errors of the experience store and artifact store."""


class StoreError(Exception):
    """Bad DB URL, unreachable database, schema at the wrong revision, corrupt or missing artifact,
    unknown id: one clear message, never a partial write."""


class ArtifactError(StoreError):
    """An artifact is missing or its sha256 does not match."""


class SchemaError(StoreError):
    """The store's schema is not at the revision this code needs (run `flywheel db upgrade`)."""
