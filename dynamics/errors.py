"""Re-export of the user-facing error and its validation helper (defined in `models.errors`,
the bottom layer, so that every layer can raise it without importing upwards)."""
from models.errors import OntogenyError, require

__all__ = ["OntogenyError", "require"]
