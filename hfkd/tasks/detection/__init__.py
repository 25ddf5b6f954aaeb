"""Object detection: COCO box metrics and the DETR family's post-processing."""
