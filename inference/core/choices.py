"""The engine's option values, in a module without heavy imports: the command line builds its
parser from these before torch is imported (a fresh process reads its first scan while torch loads)."""

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")  # network autocast
# "auto" resolves per model to one of PRECISIONS (inference.engine.precision): fp16 on CUDA, bf16 on CPUs
# with bf16 units unless the model's recorded bf16-vs-fp32 agreement is below 0.99, else fp32
PRECISION_CHOICES = ("auto", *PRECISIONS)
DEFAULT_PRECISION = "auto"
EXPORT_METHODS = ("logits", "argmax")  # logits: interpolate then argmax; argmax: argmax then nearest
RESAMPLINGS = ("fast", "nnunet")  # fast: area down / linear up; nnunet: nnU-Net's own resampling
QA_MODES = ("report", "strict", "off")  # quality flags: report them; also fail flagged cases; skip the check
# nnunet: labels that agree with nnU-Net's predictor (mean Dice 0.98-0.9998 against 0.74-0.91 for
# fast) for seconds more per case (BENCHMARKS.md, "Precision and resampling defaults")
DEFAULT_RESAMPLING = "nnunet"
