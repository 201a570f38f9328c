"""Tools that read a finished OUT: its shards (DuckDB views), inspect/explain, the training exports,
the evaluation against labels and the HTML report. None of them runs the pipeline."""
