"""Array resampling kernels used on the way into and out of a network: `fast` (area down / linear
up in torch, `--resampling fast`) and `nnunet` (nnU-Net's own spline resampling, `--resampling
nnunet`). Pure functions on arrays; may import `inference.core` only.
"""
