"""pipeline: turn a pile of documents into a vector dataset through an embeddings API."""

__version__ = "0.1.0"
