"""Model folders: allowlisted architectures, weights_only loading, fold averaging, clear errors."""
import json

import pytest
import torch

from inference.engine.model import ModelError, build_network, load_model, read_model_config
from tests.factories import architecture, make_model_folder


def test_loads_stripped_nnunet_folder(tmp_path):
    folder = make_model_folder(tmp_path / "m")
    model = load_model(folder)
    assert model.config.patch_size == (16, 32, 32)
    assert model.config.spacing == (2.5, 1.6, 1.6)
    assert model.config.num_classes == 14
    assert model.config.normalization == "CTNormalization"
    out = model(torch.zeros(1, 1, 16, 32, 32))
    assert out.shape == (1, 14, 16, 32, 32)
    assert not model.networks[0].training


def test_several_folds_average_their_logits(tmp_path):
    folder = make_model_folder(tmp_path / "m", folds=(0, 1))
    both = load_model(folder)
    fold0, fold1 = load_model(folder, folds=[0]), load_model(folder, folds=[1])
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(both(x), (fold0(x) + fold1(x)) / 2, rtol=1e-5, atol=1e-5)


def test_unknown_architecture_is_rejected(tmp_path):
    with pytest.raises(ModelError, match="unknown architecture"):
        build_network(architecture(class_name="os.system"), 1, 2)


def test_building_block_outside_allowlist_is_rejected():
    arch = architecture()
    arch["arch_kwargs"]["nonlin"] = "subprocess.Popen"
    with pytest.raises(ModelError, match="not an accepted building block"):
        build_network(arch, 1, 2)


class Payload:  # a pickled object that weights_only loading must refuse
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_with_arbitrary_object_is_refused(tmp_path):
    folder = make_model_folder(tmp_path / "m")
    checkpoint = folder / "fold_all" / "checkpoint_final.pth"
    data = torch.load(checkpoint, weights_only=True)
    data["evil"] = Payload()
    torch.save(data, checkpoint)
    with pytest.raises(ModelError, match="weights_only"):
        load_model(folder)


def test_weights_that_do_not_match_the_plans_are_refused(tmp_path):
    folder = make_model_folder(tmp_path / "m")
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [8, 16, 32]
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelError, match="do not match"):
        load_model(folder)


def test_missing_checkpoint_and_missing_folder(tmp_path):
    folder = make_model_folder(tmp_path / "m")
    (folder / "fold_all" / "checkpoint_final.pth").unlink()
    with pytest.raises(ModelError, match="no checkpoint"):
        load_model(folder)
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_inherited_configuration_and_region_labels(tmp_path):
    folder = make_model_folder(tmp_path / "m")
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_lowres_child"] = {"inherits_from": "3d_fullres", "spacing": [5.0, 3.2, 3.2]}
    (folder / "plans.json").write_text(json.dumps(plans))
    config = read_model_config(folder, "3d_lowres_child")
    assert config.spacing == (5.0, 3.2, 3.2) and config.patch_size == (16, 32, 32)
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["labels"]["tumor"] = [1, 2]
    (folder / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(ModelError, match="region"):
        read_model_config(folder, "3d_fullres")


def test_original_nnunet_checkpoint_with_numpy_logs_loads(tmp_path):
    """Unstripped nnU-Net checkpoints carry numpy scalars in their logs; the allowlist admits them."""
    import numpy as np
    folder = make_model_folder(tmp_path / "m")
    checkpoint = folder / "fold_all" / "checkpoint_final.pth"
    data = torch.load(checkpoint, weights_only=True)
    data["logging"] = {"ema_fg_dice": [np.float64(0.5), np.float32(0.25)], "epoch_end_timestamps": [1.0]}
    data["current_epoch"] = 3
    torch.save(data, checkpoint)
    assert load_model(folder).config.num_classes == 14
