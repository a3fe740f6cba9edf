"""Relation data: the LRE files, the paper's templates, prompts, metrics and the task groups."""
