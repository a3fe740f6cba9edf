"""The neuron scores of ``relspec identify --method``: ``registry`` names them, one module per score."""
