"""The curation stages, in the order data flows through them: ingest (formats and sources ->
canonical rows), replay (sandbox + fidelity), judges (metric and LLM), routing; plus the dedup keys,
best-of-N and the discipline classifier they use. Each Ray stage is a pipeline.stage.Stage."""
