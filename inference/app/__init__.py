"""The application around a segmenter: the command line (`cli`), choosing a segmenter from
`--model` (`segmenters`), many cases through it with prefetching and per-case isolation
(`pipeline`), the optional volume report and preview images (`volumes`, `preview`), the per-case
quality check (`quality`) and the output formats, DICOM SEG included (`outputs`, `dicom_seg`). May
import every other layer of `inference`.
"""
