"""Identification: ``relspec identify`` (``pipeline``), its scores (``methods``), random controls and dampened sets."""
