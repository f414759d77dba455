"""The engine's option values, in a module without heavy imports: the command line builds its
parser from these before torch is imported (a fresh process reads its first scan while torch loads)."""

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")  # network autocast
EXPORT_METHODS = ("logits", "argmax")  # logits: interpolate then argmax; argmax: argmax then nearest
RESAMPLINGS = ("fast", "nnunet")  # fast: area down / linear up; nnunet: nnU-Net's own resampling
QA_MODES = ("report", "strict", "off")  # quality flags: report them; also fail flagged cases; skip the check
