"""Small shared helpers with no knowledge of models, sets or data: the bottom layer."""
