"""Object detection: the `objects` data layout, COCO folders, the demo scenes, box transforms and the collator."""
