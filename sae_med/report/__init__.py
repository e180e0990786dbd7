"""Reports: the claims as verdicts, the learning curve, the notebooks' helpers, the book,
exports. Handed results; never runs a stage."""
