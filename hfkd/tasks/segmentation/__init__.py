"""Semantic segmentation: data (masks, Cityscapes, the demo scenes) and joint transforms, mean-IoU metrics, and the
references' DeepLabV3 / PSPNet networks through segmentation-models-pytorch."""
