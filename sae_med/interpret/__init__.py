"""Interpretation: what each latent fires on, dashboards, automated interpretation and its
chat backends. Never runs a stage."""
