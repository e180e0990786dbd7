"""Sparse autoencoders: one file per architecture, their shared kernels, and interop with
other tools."""
