"""sae-med: domain-specific vs broad sparse autoencoders on language-model activations."""

__version__ = "0.1.0"

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
"""The log line of the command line and of its worker processes."""
