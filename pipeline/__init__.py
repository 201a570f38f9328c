"""twi-curate: curation pipeline for Thinking-with-Images training data."""

# The judges' registry declares the quality dimensions that the sample schema's score columns, the
# routing thresholds and the reports are built from (schemas.dimensions): importing it here
# registers them in every process that runs a pipeline module, a fresh Ray worker included.
import judges  # noqa: F401

__version__ = "0.1.0"
