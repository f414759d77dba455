"""FLARE-style abdominal CT segmentation with nnU-Net v2 model folders, run by our own engine.

The packages follow the pipeline and import only downwards (checked by import-linter, see
`.importlinter`):

    app         command line, many cases through one segmenter, volume report, preview, quality
                check, DICOM SEG output
    batch       a part of a batch (shards, --continue checks), part reports, the completeness check;
                imports io and core only
    cascade     organ model -> tumour models on organ crops -> post-processing; reads cascade.json
    engine      one nnU-Net model: load, preprocess, sliding window, logits to labels
    resampling  array resampling kernels (fast torch path, nnU-Net's spline path)
    io          reading scans, writing label maps, canonical orientation
    core        what every layer shares: Geometry, the FLARE label table, the foreground box, option
                vocabularies
"""
