"""Neuron sets: the model shape they fit, the set and scores files, the sets-folder layout."""
