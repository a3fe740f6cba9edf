"""The lm-eval side: ``relspec-hf`` (``hflm``), switching neurons off, positions, ablated checkpoints."""
