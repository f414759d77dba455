"""The CPU engine's low-memory path against the whole-volume path it replaces.

Slab-wise preprocessing must give the whole-volume network input bit for bit; the streamed
sliding window + export must give the labels of the whole logit map (up to float-rounding ties);
clamping HU inside preprocessing must give what clamping a copy of the scan first gave.
"""
import numpy as np
import pytest
import torch

import inference.engine.preprocessing as preprocessing
from inference.cascade.segmenter import CascadeSegmenter, aorta_median_hu
from inference.cascade.parameters import CascadeParameters
from inference.engine.runner import EngineOptions, ModelRunner
from inference.core.geometry import Geometry
from inference.cascade.cascade_json import load_manifest
from inference.engine.model import IntensityProperties, ModelConfig, load_model
from inference.engine.preprocessing import preprocess, sanitize_hu
from tests.factories import make_model_folder
from tests.reference_export import export_labels
from tests.reference_sliding_window import predict_logits


def config(normalization="CTNormalization", spacing=(1.0, 1.6, 1.6), transpose=(0, 1, 2)) -> ModelConfig:
    return ModelConfig("m", "3d_fullres", (8, 8, 8), spacing, transpose, tuple(int(a) for a in np.argsort(transpose)),
                       normalization, IntensityProperties(40.0, 300.0, -1000.0, 1500.0), {"background": 0, "a": 1},
                       2, None)


def scan(shape=(37, 50, 46), seed=0) -> np.ndarray:
    """CT-like noise with a zero border (so the non-zero crop matters) and scanner padding values."""
    volume = np.random.default_rng(seed).normal(0, 1500, shape).astype(np.float32)
    volume[:3] = 0
    volume[:, :, :2] = 0
    volume[5, 5, 5], volume[6, 6, 6] = -32768, 5000
    return volume


def whole_volume_reference(monkeypatch, volume, spacing, cfg):
    """What preprocessing did before slabs: clamp a copy of the scan, then the whole crop at once."""
    with monkeypatch.context() as patch:
        patch.setattr(preprocessing, "_slabs_are_exact", lambda *args: False)
        return preprocess(sanitize_hu(volume), spacing, cfg)


@pytest.mark.parametrize("model_spacing,transpose", [
    ((1.0, 1.6, 1.6), (0, 1, 2)),   # planes shrink, z kept (the FLARE organ model's case)
    ((2.5, 1.6, 1.6), (0, 1, 2)),   # both shrink: planes first, then z
    ((0.7, 1.6, 1.6), (0, 1, 2)),   # z grows, planes shrink
    ((2.5, 0.8, 0.8), (0, 1, 2)),   # z alone
    ((1.0, 0.8, 0.8), (0, 1, 2)),   # nothing resized
    ((0.4, 0.4, 0.5), (2, 1, 0)),   # transposed; planes grow more than z: whole-volume path
])
@pytest.mark.parametrize("normalization", ["CTNormalization", "NoNormalization", "ZScoreNormalization"])
def test_slabwise_preprocessing_equals_whole_volume_bit_for_bit(monkeypatch, model_spacing, transpose, normalization):
    monkeypatch.setattr(preprocessing, "SLAB_VOXELS", 700)  # slabs of one slice: the most chunked case
    cfg = config(normalization, model_spacing, transpose)
    volume = scan()
    reference = whole_volume_reference(monkeypatch, volume, (1.0, 0.8, 0.8), cfg)
    ours = preprocess(volume, (1.0, 0.8, 0.8), cfg, clamp_hu=True)
    assert ours.crop == reference.crop and ours.transposed_shape == reference.transposed_shape
    assert ours.data.dtype == torch.float32 and torch.equal(ours.data, reference.data)


def test_slabwise_preprocessing_of_a_flipped_integer_view(monkeypatch):
    """Canonicalised scans arrive as flipped views, some as integers: same input, same network input."""
    monkeypatch.setattr(preprocessing, "SLAB_VOXELS", 5000)
    volume = np.clip(scan(), -32768, 32767).astype(np.int16)[::-1, :, ::-1]
    reference = whole_volume_reference(monkeypatch, volume, (1.0, 0.8, 0.8), config())
    assert torch.equal(preprocess(volume, (1.0, 0.8, 0.8), config(), clamp_hu=True).data, reference.data)


def test_preprocessing_never_modifies_the_scan():
    volume = scan()
    volume.setflags(write=False)
    preprocess(volume, (1.0, 0.8, 0.8), config(), clamp_hu=True)
    assert volume[5, 5, 5] == -32768 and volume[6, 6, 6] == 5000


def synthetic_ct(shape, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    body = sum(g ** 2 for g in grid) < 0.8
    image = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, shape)
    image[(grid[0] - 0.2) ** 2 + (grid[1] + 0.3) ** 2 + grid[2] ** 2 < 0.1] = 150
    image[0, :4, :4] = -3024  # scanner padding: clamped by preprocessing
    return image.astype(np.float32)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("model") / "organ", bias_class=0,
                             labels={"background": 0, "a": 1, "b": 2, "c": 3})


@pytest.mark.parametrize("export", ["logits", "argmax"])
def test_streamed_engine_agrees_with_the_whole_logit_map(model_folder, export):
    """Differential: the CPU path (slab-wise preprocessing, streamed sliding window, slab export)
    against the whole-volume path (full logit map, whole-map export) on a random-weight model,
    whose speckled output is near a decision boundary everywhere: the harshest case for rounding."""
    runner = ModelRunner(load_model(model_folder), EngineOptions(export=export))
    image, spacing = synthetic_ct((40, 70, 66)), (2.5, 0.8, 0.8)  # in-plane resampling, 5 tiles deep
    logits, pre = predict_logits(runner, sanitize_hu(image), spacing)
    whole = export_labels(logits, pre, runner.config.transpose_backward, export, runner.config.label_values)
    timings = {}
    ours = runner.segment(image, spacing, timings, clamp_hu=True)
    assert len(np.unique(whole)) > 1
    assert ours.shape == whole.shape and ours.dtype == np.uint8
    assert (ours == whole).mean() >= 0.999
    assert {"preprocess", "network", "export"} <= set(timings)


def test_host_accumulation_gives_the_same_labels(model_folder):
    """The GPU's fallback accumulates the logits in host RAM: the same labels, bit for bit."""
    from dataclasses import replace

    from inference.engine.runner import Timer
    runner = ModelRunner(load_model(model_folder), EngineOptions(gpu_memory_budget_mb=10_000))
    image, spacing = synthetic_ct((40, 70, 66)), (2.5, 0.8, 0.8)
    pre = preprocess(image, spacing, runner.config, clamp_hu=True)
    plan = runner.memory_plan(pre.data.shape[1:])
    assert plan.accumulate_on_device and plan.tile == runner.config.patch_size
    on_device = runner._segment_planned(pre, plan, Timer({}))
    in_host_ram = runner._segment_planned(pre, replace(plan, accumulate_on_device=False), Timer({}))
    np.testing.assert_array_equal(in_host_ram, on_device)


def test_out_of_memory_is_retried_with_the_fallback_plan(model_folder, monkeypatch):
    """Simulated: the first sliding window raises torch.OutOfMemoryError, as a GPU short of memory
    would; `segment` retries with host accumulation and tiles half as deep, says so in the ledger,
    and returns exactly that plan's labels."""
    import inference.engine.runner as engine
    from inference.engine.device_memory import recording
    runner = ModelRunner(load_model(model_folder), EngineOptions(gpu_memory_budget_mb=10_000))
    image, spacing = synthetic_ct((40, 70, 66)), (2.5, 0.8, 0.8)
    pre = preprocess(image, spacing, runner.config, clamp_hu=True)
    divisors = engine.stride_divisors(runner.cost.unet)
    fallback = engine._fallback_plan(runner.memory_plan(pre.data.shape[1:]), runner.config.patch_size, divisors)
    expected = runner._segment_planned(pre, fallback, engine.Timer({}))
    real, placements = engine.sliding_window_slabs, []

    def out_of_memory_once(*args, **kwargs):
        placements.append((tuple(args[2]), kwargs["placement"].accumulate_on_device))
        if len(placements) == 1:
            raise torch.OutOfMemoryError("simulated")
        return real(*args, **kwargs)
    monkeypatch.setattr(engine, "sliding_window_slabs", out_of_memory_once)
    monkeypatch.setattr(engine, "_retries_out_of_memory", lambda device: True)
    monkeypatch.setattr(engine.torch.cuda, "empty_cache", lambda: None)
    with recording() as ledger:
        labels = runner.segment(image, spacing, {}, clamp_hu=True)
    patch_size = tuple(runner.config.patch_size)
    assert placements == [(patch_size, True), ((patch_size[0] // 2, *patch_size[1:]), False)]
    assert any("GPU out of memory; retried with tiles 8x32x32" in event for event in ledger.events)
    np.testing.assert_array_equal(labels, expected)


def test_cascade_model_stages_clamp_without_a_copy_and_match_clamped_input(tmp_path, model_folder):
    """A cascade whose organ model clamps while preprocessing labels the scan exactly like the
    same models handed a clamped copy (the stage contract for injected stages)."""
    from training.cascade_json_writer import write_cascade_json
    root = tmp_path / "weights"
    make_model_folder(root / "organ", bias_class=0)
    make_model_folder(root / "tumor_liver", labels={"background": 0, "tumor": 1}, bias_class=0)
    write_cascade_json(root, organ_folder="organ", tumor_stages=[{"organ": 1, "folder": "tumor_liver"}],
                       parameters={"aorta_min_mm3": 0.0})
    manifest = load_manifest(root)
    loaded = CascadeSegmenter(manifest)
    seen = []

    def organ_stage(volume, spacing, timings):
        seen.append(volume)
        return ModelRunner(load_model(root / "organ"), EngineOptions()).segment(volume, spacing, timings)

    injected = CascadeSegmenter(manifest, organ_stage=organ_stage, tumor_stage_fns={1: loaded.tumor_stage_fns[1]})
    image = synthetic_ct((24, 64, 64), seed=3)
    image.setflags(write=False)
    geometry = Geometry(image.shape, (2.5, 0.8, 0.8))
    ours = loaded.segment(image, geometry, {})
    np.testing.assert_array_equal(ours, injected.segment(image, geometry, {}))
    assert seen[0].min() == -1024.0  # the injected stage was handed the clamped copy
    assert loaded.last_case_info["aorta_found"] and loaded.last_case_info["tumor_stages_run"] == ["liver"]
    timing_free = lambda info: {k: v for k, v in info.items() if k not in ("stage_seconds", "time_budget")}
    assert timing_free(loaded.last_case_info) == timing_free(injected.last_case_info)
    assert loaded.last_case_info["time_budget"]["skipped"] == injected.last_case_info["time_budget"]["skipped"] == {}


def test_aorta_median_is_taken_on_clamped_hu():
    organs = np.zeros((4, 4, 4), np.uint8)
    organs[1:3, 1:3, 1:3] = 5
    volume = np.full((4, 4, 4), 200.0, np.float32)
    volume[1:3, 1:3, 1:3] = [[[5000, 5000], [5000, 100]], [[100, 100], [100, 5000]]]  # median of clamped: 3071
    params = CascadeParameters.from_manifest({"aorta_min_mm3": 0.0})
    assert aorta_median_hu(volume, organs, Geometry(organs.shape, (1.0, 1.0, 1.0)), params) == 1585.5
