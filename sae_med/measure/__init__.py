"""Measurement: metrics, intervals, dark matter, spliced CE, scoring, the results table,
comparisons and diagnoses. Handed SAEs, caches and a model; never runs a stage."""
