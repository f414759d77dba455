"""The training driver: markers (skip what is done, redo what is stale), the recipe's data flow with
a stand-in for nnU-Net, the CLI, and one real end-to-end smoke run through nnU-Net (a few minutes)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.io.images import read_image
from inference.cascade.cascade_json import load_manifest
from training.driver import Driver, run
from training.nnunet_backend import NnUNetBackend
from training.recipe_settings import CONFIGURATION, DriverError, RunOptions
from training.unit_executor import StateStore, Unit, execute_units
from training.nnunet import NnUNetPaths, find_dataset_folder, write_raw_dataset
from training.nnunet_export import STRIPPED_CHECKPOINT_KEYS
from training.presets import SMOKE, apply_overrides

ALL_TUMOR_ORGANS = apply_overrides(SMOKE, ["tumor_organs=[1,4,2,13]"])


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """In-process inference (pseudo labels, evaluation) on tiny volumes: one thread is fastest on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ markers: execute_units on toy units


def toy_units(calls: list, params: dict, folder: Path, fail: set = frozenset()) -> list[Unit]:
    def runner(name):
        def run_unit(resume):
            calls.append((name, resume))
            assert not (folder / f"{name}.out").exists(), "outputs must be removed before a redo"
            if name in fail:
                raise KeyboardInterrupt(name)  # an interrupted run
            (folder / f"{name}.out").write_text(name)
            return {"name": name}
        return run_unit
    return [Unit("a", "data", (), params.get("a", {}), runner("a"), lambda: [folder / "a.out"]),
            Unit("b", "1", ("a",), params.get("b", {}), runner("b"), lambda: [folder / "b.out"], resumable=True),
            Unit("c", "2", ("b",), params.get("c", {}), runner("c"), lambda: [folder / "c.out"])]


ALL = ("data", "1", "2")


def statuses(report):
    return {r["unit"]: r["status"] for r in report}


def test_second_run_skips_and_a_changed_parameter_redoes_that_unit_and_later_ones(tmp_path):
    store, calls = StateStore(tmp_path / "state"), []
    assert statuses(execute_units(toy_units(calls, {}, tmp_path), store, steps=ALL)) == dict.fromkeys("abc", "ran")
    assert statuses(execute_units(toy_units(calls, {}, tmp_path), store, steps=ALL)) == dict.fromkeys("abc", "skipped")
    assert [c[0] for c in calls] == ["a", "b", "c"]
    report = execute_units(toy_units(calls, {"b": {"epochs": 2}}, tmp_path), store, steps=ALL)
    assert statuses(report) == {"a": "skipped", "b": "ran", "c": "ran"}
    report = execute_units(toy_units(calls, {"c": {"x": 1}, "b": {"epochs": 2}}, tmp_path), store, steps=ALL)
    assert statuses(report) == {"a": "skipped", "b": "skipped", "c": "ran"}
    assert json.loads((tmp_path / "state" / "c.json").read_text())["params"] == {"x": 1}


def test_redo_and_step_selection(tmp_path):
    store, calls = StateStore(tmp_path / "state"), []
    with pytest.raises(DriverError, match=r"b \(step 1\) needs a.*add step data to --steps"):
        execute_units(toy_units(calls, {}, tmp_path), store, steps=("1",))
    assert calls == []
    execute_units(toy_units(calls, {}, tmp_path), store, steps=("data",))
    report = execute_units(toy_units(calls, {}, tmp_path), store, steps=("1",))
    assert statuses(report) == {"a": "skipped", "b": "ran", "c": "not done"}
    execute_units(toy_units(calls, {}, tmp_path), store, steps=ALL)
    report = execute_units(toy_units(calls, {}, tmp_path), store, steps=ALL, redo=("data",))
    assert statuses(report) == dict.fromkeys("abc", "ran")  # a new run of a makes b and c stale
    # a changed, not selected: b and c are left stale, and selecting only c is refused
    with pytest.raises(DriverError, match="add steps data,1 to --steps"):
        execute_units(toy_units(calls, {"a": {"n": 1}}, tmp_path), store, steps=("2",))


def fan_out_units(calls: list, barrier, fail: set = frozenset()) -> list[Unit]:
    """a -> t1, t2, t3 (concurrent, each waits at `barrier`) -> d."""
    def runner(name, wait):
        def run_unit(resume):
            if wait:
                barrier.wait()  # times out (BrokenBarrierError) unless all three run at once
            calls.append(name)
            if name in fail:
                raise RuntimeError(f"{name} failed")
            return {"name": name}
        return run_unit
    trainings = [Unit(f"t{i}", "2", ("a",), {}, runner(f"t{i}", True), resumable=True, concurrent=True)
                 for i in (1, 2, 3)]
    return [Unit("a", "data", (), {}, runner("a", False)), *trainings,
            Unit("d", "2", ("t1", "t2", "t3"), {}, runner("d", False))]


def test_concurrent_units_run_side_by_side_and_a_failure_keeps_the_others_done(tmp_path):
    import threading

    store, calls = StateStore(tmp_path / "state"), []
    barrier = threading.Barrier(3, timeout=20)
    with pytest.raises(RuntimeError, match="t2 failed"):
        execute_units(fan_out_units(calls, barrier, fail={"t2"}), store, steps=ALL, parallel=3)
    assert sorted(calls) == ["a", "t1", "t2", "t3"]  # all three passed the barrier together; d never ran
    assert store.load("t1") and store.load("t3") and store.load("t2") is None
    assert store.load("t2", started=True) is not None  # an interrupted resumable unit resumes next time
    calls.clear()
    report = execute_units(fan_out_units(calls, threading.Barrier(1)), store, steps=ALL, parallel=3)
    assert statuses(report) == {"a": "skipped", "t1": "skipped", "t2": "ran", "t3": "skipped", "d": "ran"}
    assert [r["unit"] for r in report] == ["a", "t1", "t2", "t3", "d"]  # unit order, not finishing order


def test_parallel_one_runs_concurrent_units_one_after_another(tmp_path):
    import threading

    store, calls = StateStore(tmp_path / "state"), []
    execute_units(fan_out_units(calls, threading.Barrier(1)), store, steps=ALL, parallel=1)
    assert calls == ["a", "t1", "t2", "t3", "d"]


def test_interrupted_resumable_unit_resumes_and_others_start_clean(tmp_path):
    store, calls = StateStore(tmp_path / "state"), []
    with pytest.raises(KeyboardInterrupt):
        execute_units(toy_units(calls, {}, tmp_path, fail={"b"}), store, steps=ALL)
    assert store.load("b", started=True) is not None and store.load("b") is None
    report = execute_units(toy_units(calls, {}, tmp_path), store, steps=ALL)
    assert statuses(report) == {"a": "skipped", "b": "ran", "c": "ran"}
    assert calls[-2:] == [("b", True), ("c", False)]
    assert store.load("b", started=True) is None
    # a changed key never resumes
    with pytest.raises(KeyboardInterrupt):
        execute_units(toy_units(calls, {"b": {"e": 1}}, tmp_path, fail={"b"}), store, steps=ALL)
    execute_units(toy_units(calls, {"b": {"e": 2}}, tmp_path), store, steps=ALL)
    assert calls[-2] == ("b", False)


# ------------------------------------------------------------------ the recipe with a stand-in for nnU-Net


class FakeNnUNet:
    """Same methods as NnUNetBackend; 'training' writes a random-weight model folder with the
    dataset's labels (training.model_folders), so the driver's own work (label merging, crops,
    pseudo labels with the engine, export, manifest, evaluation) runs for real, in seconds."""

    def __init__(self, root: Path):
        self.paths = NnUNetPaths(root)
        self.calls: list[tuple] = []
        self.threads: dict[int, int | None] = {}  # dataset id -> the threads its training was given

    def remove_dataset(self, dataset_id):
        for base in (self.paths.raw, self.paths.preprocessed, self.paths.results):
            for folder in base.glob(f"Dataset{dataset_id:03d}_*"):
                shutil.rmtree(folder)

    def write_dataset(self, dataset_id, name, cases, labels):
        self.remove_dataset(dataset_id)
        write_raw_dataset(self.paths, dataset_id, name, cases, labels)
        self.calls.append(("write", dataset_id, len(cases)))

    def _preprocessed(self, dataset_id) -> Path:
        folder = self.paths.preprocessed / find_dataset_folder(self.paths.raw, dataset_id).name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def plan_and_preprocess(self, dataset_ids, plans_name, net):
        for dataset_id in dataset_ids:
            (self._preprocessed(dataset_id) / f"{plans_name}.json").write_text(json.dumps(dataclasses.asdict(net)))
        self.calls.append(("plan", tuple(dataset_ids)))

    def reuse_plans(self, pairs, plans_name):
        for source_id, target_id in pairs:
            plans = find_dataset_folder(self.paths.preprocessed, source_id) / f"{plans_name}.json"
            shutil.copyfile(plans, self._preprocessed(target_id) / f"{plans_name}.json")
            self.calls.append(("reuse", source_id, target_id))

    def fold_folder(self, dataset_id, plans_name, net):
        name = find_dataset_folder(self.paths.preprocessed, dataset_id).name
        return self.paths.results / name / f"nnUNetTrainer__{plans_name}__{CONFIGURATION}" / "fold_all"

    def train(self, dataset_id, plans_name, net, *, resume=False, threads=None):
        from training.model_folders import make_model_folder

        labels = json.loads((find_dataset_folder(self.paths.raw, dataset_id) / "dataset.json").read_text())["labels"]
        fold = self.fold_folder(dataset_id, plans_name, net)
        make_model_folder(fold / "model", labels=labels, patch=(16, 32, 32), spacing=(4.0, 3.0, 3.0),
                          seed=dataset_id, bias_class=None)
        (fold / "checkpoint_final.pth").write_bytes(b"")
        self.calls.append(("train", dataset_id, net.epochs, resume))
        self.threads[dataset_id] = threads

    def export(self, dataset_id, plans_name, net, dest):
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(self.fold_folder(dataset_id, plans_name, net) / "model", dest)

    def trained(self):
        return sorted(c[1] for c in self.calls if c[0] == "train")


def fake_options(root: Path, preset=ALL_TUMOR_ORGANS, **changes) -> RunOptions:
    options = RunOptions(preset=preset, data=root / "data", work=root / "work", weights=root / "weights",
                         make_data=True, real_ct=None, threads=1, processes=1, ablation=True)
    return dataclasses.replace(options, **changes)


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_recipe")
    backend = FakeNnUNet(root / "work" / "nnunet")
    report = run(fake_options(root), backend=backend)
    return root, backend, report


def test_recipe_runs_every_unit_in_order_and_trains_every_model(fake_run):
    root, backend, report = fake_run
    assert all(r["status"] == "ran" for r in report)
    assert [r["unit"] for r in report][:6] == ["data", "organ_first", "organ_labels", "organ", "tumor_crops",
                                               "tumor_plan"]
    assert backend.trained() == [301, 302, 311, 312, 313, 314, 321, 322, 323, 324]
    assert ("plan", (311, 312, 313, 314)) in backend.calls  # one planning call for the four tumor datasets
    assert ("reuse", 301, 302) in backend.calls and ("reuse", 311, 321) in backend.calls
    cases = {c["id"]: c for c in json.loads((root / "work" / "cases.json").read_text())["cases"]}
    kinds = sorted(c["kind"] for c in cases.values())
    assert kinds == ["full", "full", "partial", "tumor_only", "unlabeled", "validation"]
    first = [c for c in backend.calls if c[0] == "write" and c[1] == 301][0]
    assert first[2] == 2  # the first organ model: the two fully labelled cases only


@pytest.mark.parametrize("device, parallel, threads, tumor_threads", [
    ("cpu", 2, 2, 1),  # side by side on the CPU: the thread budget is shared
    ("cpu", 4, 2, 1),  # never below one thread
    ("cpu", 2, 5, 2),
    ("cpu", 1, 2, None),  # one at a time: the backend's own count
])
def test_side_by_side_tumor_trainings_share_the_cpu_threads(tmp_path, device, parallel, threads, tumor_threads):
    backend = FakeNnUNet(tmp_path / "work" / "nnunet")
    run(fake_options(tmp_path, device=device, parallel=parallel, threads=threads), backend=backend)
    assert backend.threads[301] is None and backend.threads[302] is None  # organ models: all threads
    assert {backend.threads[d] for d in (311, 312, 313, 314, 321, 322, 323, 324)} == {tumor_threads}


def test_side_by_side_trainings_on_a_gpu_keep_their_threads(tmp_path):
    # on a GPU the CPU threads only feed it (the whole recipe on cuda needs a GPU for its pseudo labels)
    options = fake_options(tmp_path, device="cuda", parallel=4, threads=2)
    assert Driver(options, backend=FakeNnUNet(tmp_path / "nn")).side_by_side_threads() is None


def test_a_training_given_its_threads_gets_them_in_its_environment(tmp_path, monkeypatch):
    import training.nnunet as nnunet

    captured = []
    monkeypatch.setattr(nnunet, "run_command", lambda command, env, **kw: captured.append(env))
    backend = NnUNetBackend(tmp_path / "nn", device="cpu", threads=2)
    (backend.paths.preprocessed / "Dataset311_T").mkdir(parents=True)
    backend.train(311, "P", SMOKE.tumor)
    backend.train(311, "P", SMOKE.tumor, threads=1)
    assert [(env["OMP_NUM_THREADS"], env["TORCH_NUM_THREADS"]) for env in captured] == [("2", "2"), ("1", "1")]


def test_organ_targets_keep_real_labels_and_have_no_tumor_class(fake_run):
    root, _, _ = fake_run
    cases = json.loads((root / "work" / "cases.json").read_text())["cases"]
    for case in cases:
        if case["kind"] == "validation":
            continue
        target, _ = read_image(root / "work" / "step1" / "targets" / f"{case['id']}.nii.gz")
        assert target.max() <= 13
        if case["label"]:
            real, _ = read_image(root / "work" / case["label"])
            organs = [a for a in case["annotated"] if a < 14]
            annotated = np.isin(real, organs)
            assert np.array_equal(target[annotated], real[annotated]), case["id"]  # the real label wins
            if case["kind"] != "full":
                assert (root / "work" / "step1" / "pseudo" / f"{case['id']}.nii.gz").is_file()


def test_tumor_crops_and_datasets(fake_run):
    root, backend, _ = fake_run
    work = root / "work"
    crops = json.loads((work / "state" / "tumor_crops.json").read_text())["result"]
    assert set(crops) == {"liver", "pancreas", "right_kidney", "left_kidney"}
    # 2 full and 1 partial case annotate these organs; the tumor-only case's organs come from the
    # (here random) first organ model, so its crop exists where that model put the organ
    assert all(3 <= v["crops"] <= 4 and v["with_tumor"] >= 1 for v in crops.values())
    for organ, stats in crops.items():
        labels = sorted((work / "step2" / "crops" / organ / "labels").glob("*.nii.gz"))
        assert len(labels) == stats["crops"] and all(set(np.unique(read_image(p)[0])) <= {0, 1} for p in labels)
    pseudo = json.loads((work / "state" / "pseudo_tumors.json").read_text())["result"]
    assert pseudo["cases"] == 1  # the unlabeled case (every labelled case of this data annotates tumors)


def test_export_writes_a_verified_cascade_with_provenance_and_metrics(fake_run):
    root, _, _ = fake_run
    weights = root / "weights"
    manifest = load_manifest(weights)  # verifies every SHA-256
    assert [(t.organ, t.folder.name, t.needs_contrast) for t in manifest.tumor_stages] == [
        (1, "tumor_liver", False), (4, "tumor_pancreas", False), (2, "tumor_right_kidney", True),
        (13, "tumor_left_kidney", True)]
    for stage in ("organ", "tumor_liver", "tumor_pancreas", "tumor_right_kidney", "tumor_left_kidney"):
        assert {p.name for p in (weights / stage).iterdir()} == {"plans.json", "dataset.json", "fold_all"}
    provenance = manifest.raw["provenance"]
    assert provenance["preset"] == "smoke" and provenance["real_ct_used"] is False
    assert "git_commit" in provenance and provenance["training_data"]["cases_by_kind"]["full"] == 2
    assert 0 <= provenance["validation"]["mean_organ_dsc"] <= 1
    assert provenance["validation"]["case_ids"] == ["FLARE23_0006"]
    # the export step recorded each model's bf16-vs-fp32 agreement (kept by the evaluate step's rewrite)
    agreement = manifest.raw["precision_agreement"]
    assert agreement["case_ids"] == ["FLARE23_0006"] and agreement["floor"] == 0.99
    assert set(agreement["models"]) == {"organ", "tumor_liver", "tumor_pancreas", "tumor_right_kidney",
                                        "tumor_left_kidney"}
    assert all(0 <= m["bf16_vs_fp32_mean_dice"] <= 1 and m["cases"] == 1 for m in agreement["models"].values())
    lesions = provenance["validation"]["lesions"]  # the lesion-wise table, counted on the validation case
    assert lesions["true"]["lesions"] == sum(c["lesions"] for c in lesions["by_size"].values())
    assert set(provenance["ablation"]) >= {"with_pseudo_labels", "without_pseudo_labels"}
    training = provenance["recipe"]["training"]  # SMOKE: organ models NoDA + AdamW, tumor models nnU-Net's defaults
    assert training["organ"].startswith("nnUNetTrainerNoDA, AdamW") and "1 x 2 iterations" in training["organ"]
    assert training["tumor"].startswith("nnUNetTrainer, SGD Nesterov")
    assert manifest.parameters["tumor_margin_in_plane_mm"] == SMOKE.cascade["tumor_margin_in_plane_mm"]
    assert load_manifest(root / "work" / "ablation" / "weights").tumor_stages[0].folder.name == "tumor_liver"


def test_second_run_skips_everything(fake_run):
    root, backend, _ = fake_run
    calls = len(backend.calls)
    report = run(fake_options(root), backend=backend)
    assert {r["status"] for r in report} == {"skipped"}
    assert len(backend.calls) == calls


def test_changed_parameters_redo_their_step_and_the_later_ones(fake_run, tmp_path):
    root, _, _ = fake_run
    copy = tmp_path / "copy"
    shutil.copytree(root / "work", copy / "work")
    backend = FakeNnUNet(copy / "work" / "nnunet")
    longer = apply_overrides(ALL_TUMOR_ORGANS, ["tumor.epochs=2"])
    report = run(fake_options(copy, longer, data=root / "data"), backend=backend)
    ran = {r["unit"] for r in report if r["status"] == "ran"}
    assert ran == {"tumor1_liver", "tumor1_pancreas", "tumor1_right_kidney", "tumor1_left_kidney", "pseudo_tumors",
                   "tumor2_plan", "tumor2_liver", "tumor2_pancreas", "tumor2_right_kidney", "tumor2_left_kidney",
                   "export", "ablation", "evaluate"}
    assert backend.trained() == [311, 312, 313, 314, 321, 322, 323, 324]
    assert all(c[2] == 2 for c in backend.calls if c[0] == "train")
    wider = apply_overrides(longer, ["cascade.tumor_margin_in_plane_mm=20"])
    report = run(fake_options(copy, wider, data=root / "data"), backend=backend)
    ran = {r["unit"] for r in report if r["status"] == "ran"}
    assert "tumor_crops" in ran and "organ" not in ran and "organ_labels" not in ran
    assert load_manifest(copy / "weights").parameters["tumor_margin_in_plane_mm"] == 20


def test_selected_step_with_missing_upstream_is_refused(tmp_path):
    with pytest.raises(DriverError, match="add step data to --steps"):
        run(fake_options(tmp_path), steps=["1"], backend=FakeNnUNet(tmp_path / "nn"))
    with pytest.raises(DriverError, match="unknown step"):
        run(fake_options(tmp_path), steps=["5"], backend=FakeNnUNet(tmp_path / "nn"))


def test_data_without_a_manifest_is_indexed_like_real_flare23_and_the_real_ct_joins(fake_run, tmp_path):
    from training.recipe_settings import DEFAULT_REAL_CT, REAL_CT_ID

    root, _, _ = fake_run
    data = tmp_path / "flare23"
    shutil.copytree(root / "data", data, ignore=shutil.ignore_patterns("dataset_manifest.json", ".training_data.json"))
    preset = apply_overrides(SMOKE, ["use_real_ct=true"])
    options = fake_options(tmp_path, preset, data=data, make_data=False, real_ct=DEFAULT_REAL_CT)
    run(options, steps=["data"], backend=FakeNnUNet(tmp_path / "nn"))
    cases = {c["id"]: c for c in json.loads((tmp_path / "work" / "cases.json").read_text())["cases"]}
    kinds = sorted(c["kind"] for c in cases.values() if c["id"] != REAL_CT_ID)
    assert kinds == ["full", "full", "partial", "tumor_only", "unlabeled", "validation"]
    partial = next(c for c in cases.values() if c["kind"] == "partial")
    assert partial["annotated"] == [1, 2, 3, 4, 5, 7, 8, 9, 11, 12, 13, 14]  # the labels its file holds
    real_ct = (DEFAULT_REAL_CT / f"{REAL_CT_ID}_0000.nii.gz").is_file()
    assert (REAL_CT_ID in cases) == real_ct
    if real_ct:  # ../shared/data/real: organ pseudo labels of one real CT, tumors not annotated
        assert cases[REAL_CT_ID]["kind"] == "real_pseudo" and cases[REAL_CT_ID]["annotated"] == list(range(1, 14))
        image, geometry = read_image(tmp_path / "work" / cases[REAL_CT_ID]["image"])
        assert geometry.direction == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # canonical layout


def test_make_data_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.nii.gz").write_bytes(b"x")
    with pytest.raises(DriverError, match="not empty"):
        run(fake_options(tmp_path), steps=["data"], backend=FakeNnUNet(tmp_path / "nn"))
    assert (tmp_path / "data" / "precious.nii.gz").exists()


# ------------------------------------------------------------------ CLI and the multi-GPU command


def test_cli_validates_its_arguments(tmp_path, capsys, monkeypatch):
    from training.__main__ import main

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the CLI configures the process; not here

    base = ["--preset", "smoke", "--data", str(tmp_path / "d"), "--work", str(tmp_path / "w"),
            "--weights", str(tmp_path / "x")]
    assert main(base + ["--num-gpus", "2"]) == 2  # DDP needs --device cuda
    assert "--num-gpus 2 needs --device cuda" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--steps", "1,5"])
    assert main(base + ["--set", "tumor.epoch=3"]) == 2
    assert "unknown field" in capsys.readouterr().err
    assert main(base + ["--steps", "2"]) == 2  # step 2 before the data and step 1
    assert "add steps data,1 to --steps" in capsys.readouterr().err
    for bad in (["--parallel", "0"], ["--da-workers", "-1"]):
        with pytest.raises(SystemExit):
            main(base + bad)


def test_single_device_training_gets_its_augmentation_workers(tmp_path, monkeypatch):
    import training.nnunet as nnunet

    captured = {}
    monkeypatch.setattr(nnunet, "run_command", lambda command, env, **kw: captured.update(command=command, env=env))
    backend = NnUNetBackend(tmp_path / "nn", device="cuda", da_workers=4, threads=2)
    (backend.paths.preprocessed / "Dataset311_T").mkdir(parents=True)
    backend.train(311, "P", SMOKE.tumor)
    assert captured["env"]["nnUNet_n_proc_DA"] == "4" and captured["env"]["OMP_NUM_THREADS"] == "2"
    assert captured["command"][captured["command"].index("--device") + 1] == "cuda"


@pytest.mark.parametrize("num_gpus", [1, 2])
def test_training_options_reach_nnunet_noda_adam_and_its_output_folder(tmp_path, monkeypatch, num_gpus):
    import training.nnunet as nnunet

    captured = {}
    monkeypatch.setattr(nnunet, "run_command", lambda command, env, **kw: captured.update(command=command))
    backend = NnUNetBackend(tmp_path / "nn", device="cuda" if num_gpus > 1 else "cpu", num_gpus=num_gpus)
    (backend.paths.preprocessed / "Dataset311_T").mkdir(parents=True)
    plain = dataclasses.replace(SMOKE.tumor, augmentation=False, optimizer="adam", cpu_precision="auto")
    backend.train(311, "P", plain)
    assert "--no-augmentation" in captured["command"]
    if num_gpus == 1:
        assert captured["command"][captured["command"].index("--cpu-precision") + 1] == "auto"
    else:  # DDP trains on CUDA, in nnU-Net's own fp16 autocast
        assert "--cpu-precision" not in captured["command"]
    assert captured["command"][captured["command"].index("--optimizer") + 1] == "adam"
    assert backend.fold_folder(311, "P", plain).parent.name == "nnUNetTrainerNoDA__P__3d_fullres"
    backend.train(311, "P", dataclasses.replace(plain, augmentation=True, optimizer="sgd"))
    assert "--no-augmentation" not in captured["command"]
    assert captured["command"][captured["command"].index("--optimizer") + 1] == "sgd"
    assert backend.fold_folder(311, "P", SMOKE.tumor).parent.name == "nnUNetTrainer__P__3d_fullres"


def test_multi_gpu_training_goes_through_nnunet_ddp(tmp_path, monkeypatch):
    import training.nnunet as nnunet

    captured = {}
    monkeypatch.setattr(nnunet, "run_command", lambda command, env, **kw: captured.update(command=command, env=env))
    backend = NnUNetBackend(tmp_path / "nn", device="cuda", num_gpus=4)
    (backend.paths.preprocessed / "Dataset311_T").mkdir(parents=True)
    before = dict(os.environ)
    backend.train(311, "P", SMOKE.tumor)
    command, env = captured["command"], captured["env"]
    assert command[1:5] == ["-m", "training.nnunet_ddp", "--num-gpus", "4"] and "cuda" in command
    assert env["MASTER_ADDR"] == "localhost" and int(env["MASTER_PORT"]) > 0
    assert env["nnUNet_preprocessed"] == str(backend.paths.preprocessed) and dict(os.environ) == before
    from training.nnunet_ddp import main as ddp_main
    if torch.cuda.device_count() < 2:
        with pytest.raises(SystemExit, match="CUDA device"):
            ddp_main(["--num-gpus", "2", "--preprocessed-dataset", str(tmp_path), "--plans-name", "P",
                      "--epochs", "1", "--iterations", "1", "--device", "cuda"])


# ------------------------------------------------------------------ the real thing: nnU-Net end to end (smoke)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke_recipe")
    options = RunOptions(preset=SMOKE, data=root / "data", work=root / "work", weights=root / "weights",
                         make_data=True, real_ct=None, threads=1, processes=1, ablation=True)
    return root, options, run(options)


def test_smoke_run_trains_every_stage_with_nnunet_and_exports_stripped_folders(smoke_run):
    root, _, report = smoke_run
    assert all(r["status"] == "ran" for r in report)
    weights = root / "weights"
    manifest = load_manifest(weights)
    assert [(t.organ, t.needs_contrast) for t in manifest.tumor_stages] == [(1, False), (13, True)]
    for stage in ("organ", "tumor_liver", "tumor_left_kidney"):
        checkpoint = torch.load(weights / stage / "fold_all" / "checkpoint_final.pth", weights_only=True)
        assert set(checkpoint) == set(STRIPPED_CHECKPOINT_KEYS)
        labels = json.loads((weights / stage / "dataset.json").read_text())["labels"]
        assert len(labels) == (14 if stage == "organ" else 2)
        plans = json.loads((weights / stage / "plans.json").read_text())
        assert plans["configurations"][CONFIGURATION]["patch_size"] == list(
            SMOKE.organ.patch_size if stage == "organ" else SMOKE.tumor.patch_size)
    provenance = manifest.raw["provenance"]
    assert provenance["preset"] == "smoke" and provenance["real_ct_used"] is False
    assert provenance["validation"]["case_ids"] == ["FLARE23_0006"] and "tumor_dsc" in provenance["validation"]
    train_log = next((root / "work" / "nnunet" / "logs").glob("302_*train.log")).read_text()
    assert "Epoch 0" in train_log and "training precision: bf16 (--cpu-precision bf16, device cpu)" in train_log
    tumor_log = next((root / "work" / "nnunet" / "logs").glob("311_*train.log")).read_text()
    assert "training precision: fp32 (--cpu-precision fp32, device cpu)" in tumor_log
    training = provenance["recipe"]["training"]
    assert training["organ"].endswith("bf16 (cpu_precision bf16)")
    assert training["tumor"].endswith("fp32 (cpu_precision fp32)")


@pytest.mark.parametrize("dataset, optimizer", [(302, "adam"), (311, "sgd")])
def test_smoke_models_trained_with_the_presets_optimizer(smoke_run, dataset, optimizer):
    """SMOKE trains its organ models with AdamW and its tumor models with nnU-Net's SGD: the optimizer
    state nnU-Net saved in the full training checkpoint shows which one ran."""
    root, _, _ = smoke_run
    results = root / "work" / "nnunet" / "nnUNet_results"
    checkpoint = next(results.glob(f"Dataset{dataset}_*/*/fold_all/checkpoint_final.pth"))
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["optimizer_state"]
    per_parameter = next(iter(state["state"].values()))
    if optimizer == "adam":
        assert state["param_groups"][0]["amsgrad"] is True and "exp_avg" in per_parameter
    else:
        assert state["param_groups"][0]["nesterov"] is True and "momentum_buffer" in per_parameter
    assert (SMOKE.organ if dataset == 302 else SMOKE.tumor).optimizer == optimizer


def test_smoke_weights_run_in_the_engine(smoke_run):
    from inference.engine.runner import EngineOptions
    from inference.io.images import read_ct
    from inference.app.pipeline import segment_canonical
    from inference.app.segmenters import build_segmenter

    root, _, _ = smoke_run
    volume, geometry = read_ct(root / "data" / "imagesVal" / "FLARE23_0006_0000.nii.gz")
    labels = segment_canonical(build_segmenter(root / "weights", EngineOptions()), volume, geometry, {})
    assert labels.shape == volume.shape and labels.dtype == np.uint8 and labels.max() <= 14


def test_smoke_rerun_skips_and_a_cascade_parameter_redoes_only_export_and_evaluation(smoke_run):
    root, options, _ = smoke_run
    assert {r["status"] for r in run(options)} == {"skipped"}
    changed = dataclasses.replace(options, preset=apply_overrides(SMOKE, ["cascade.contrast_hu_threshold=300"]))
    report = run(changed)
    assert {r["unit"] for r in report if r["status"] == "ran"} == {"export", "ablation", "evaluate"}
    assert load_manifest(root / "weights").parameters["contrast_hu_threshold"] == 300


def test_git_dirty_leaves_out_the_weights_folder_the_run_writes(tmp_path, monkeypatch):
    import subprocess

    from training.steps import weights_folder as weights_folder_module

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "weights").mkdir()
    (tmp_path / "code.py").write_text("a = 1\n")
    (tmp_path / "weights" / "model.pth").write_text("old\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(weights_folder_module, "REPO_ROOT", tmp_path)
    assert weights_folder_module.git_dirty(exclude=tmp_path / "weights") is False
    (tmp_path / "weights" / "model.pth").write_text("new\n")  # the run's own output
    assert weights_folder_module.git_dirty(exclude=tmp_path / "weights") is False
    assert weights_folder_module.git_dirty() is True
    (tmp_path / "code.py").write_text("a = 2\n")  # a change of the code that made it
    assert weights_folder_module.git_dirty(exclude=tmp_path / "weights") is True
