"""Text corpora: the registry of named corpora, documents and their grouped split, the
embedded, hub and local sources, and train/eval leakage."""
