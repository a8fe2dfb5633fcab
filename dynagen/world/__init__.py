"""The embedded synthetic world (captions → scenes → images) and the tiny text-to-image model trained on it."""
