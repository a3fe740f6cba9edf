"""Model access: finding, loading and reading the structure of a transformers model."""
