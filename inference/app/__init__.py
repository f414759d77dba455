"""The application around a segmenter: the command line (`cli`), choosing a segmenter from
`--model` (`segmenters`), many cases through it with prefetching and per-case isolation
(`pipeline`), and the optional volume report and preview images (`volumes`, `preview`). May import
every other layer of `inference`.
"""
