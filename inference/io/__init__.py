"""Files in and out: reading CT scans (NIfTI, MHA, NRRD, DICOM) with their exact geometry, writing
label maps and text atomically, and the canonical axis orientation the networks see. May import
`inference.core` only.
"""
