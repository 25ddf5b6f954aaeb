"""Tasks: what differs between image classification, semantic segmentation and object detection (models, data,
task loss, metrics), behind one interface that the trainer, the teachers, the card and the command line use."""
