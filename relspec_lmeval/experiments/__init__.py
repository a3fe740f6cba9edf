"""The paper's experiments: ``relspec reproduce`` (plan, runs, report) and ``relspec compare``."""
