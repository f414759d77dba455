"""DICOM Segmentation output for a DICOM series input (highdicom + pydicom)."""
