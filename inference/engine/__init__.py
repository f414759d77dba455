"""One nnU-Net v2 model on one volume: load the model folder (`model`), crop/normalise/resample
(`preprocessing`), run the Gaussian-weighted sliding window (`sliding_window`) and turn logits back
into labels on the input grid (`logits_to_labels`); `runner.ModelRunner` chains them, sizing its
tiles and placing its buffers to a device-memory budget whose ledger (`device_memory`) counts
what the GPU would hold, on any machine. May import
`inference.resampling`, `inference.io` and `inference.core`.
"""
