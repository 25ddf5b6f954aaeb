"""Object detection: DETR-family detectors (the model computes its own matching loss), their data, metrics and
distillation."""
