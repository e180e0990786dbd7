"""The language model: one owner of every forward (tokenisation, residual stream,
unembedding) and its loader."""
