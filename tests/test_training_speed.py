from pathlib import Path

import torch

from benchmarks.training_speed import deep_supervision_targets, main, seconds_per_iteration

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def test_targets_follow_each_output_resolution_by_nearest_neighbour():
    target = torch.zeros(1, 8, 16, 16, dtype=torch.long)
    target[:, 4:, :, 8:] = 3
    outputs = [torch.zeros(1, 4, 8, 16, 16), torch.zeros(1, 4, 4, 8, 8), torch.zeros(1, 4, 2, 4, 4)]
    scaled = deep_supervision_targets(target, outputs)
    assert [t.shape[1:] for t in scaled] == [o.shape[2:] for o in outputs]
    assert torch.equal(scaled[0], target)
    coarse = scaled[2][0]  # 2 x 4 x 4: nearest picks source voxels 0 and 4 in z, 0, 4, 8, 12 in x
    assert not coarse[0].any()
    assert coarse[1].tolist() == [[0, 0, 3, 3]] * 4
    assert scaled[2].unique().tolist() == [0, 3]


def test_times_one_training_iteration_of_a_shipped_model():
    times = seconds_per_iteration(WEIGHTS / "tumor_liver", iterations=2, warmup=0)
    assert len(times) == 2 and all(t > 0 for t in times)


def test_alternates_precisions_and_prints_each_beside_the_first(capsys):
    assert main(["--model", str(WEIGHTS / "tumor_liver"), "--iterations", "1", "--warmup", "0",
                 "--threads", "1", "--precision", "fp32", "bf16", "--rounds", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(", ")[2].split(":")[0] for line in lines] == ["fp32", "bf16"]
    assert all("2 training iterations" in line for line in lines) and lines[0].endswith("1.00x the speed of fp32")
