"""Activations: the sharded on-disk cache, streams made on the fly, and the batches the
trainer reads."""
