"""Per-case quality check of a label map: flags a reader should look at before trusting it."""
from inference.app.quality.check import QA_MODES, apply_qa_mode, check_quality, warning_line

__all__ = ["QA_MODES", "apply_qa_mode", "check_quality", "warning_line"]
