"""The FLARE cascade: the organ model on the whole scan, tumour models on crops around their host
organs, then organ post-processing (`segmenter`, `parameters`, `postprocessing`), as described by
the weights folder's cascade.json (`cascade_json`). May import `inference.engine` and the layers
below it.
"""
