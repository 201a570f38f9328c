"""twi-curate: curation pipeline for Thinking-with-Images training data."""

__version__ = "0.1.0"
