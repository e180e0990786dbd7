"""Training a sweep of SAEs from activation batches: the sweep, one step, checkpoints,
schedules, records."""
