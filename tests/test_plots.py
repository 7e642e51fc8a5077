"""loss.png reads on one screen: validation metrics as grouped lines, no panel for a metric measured once."""

import json

import pytest
from PIL import Image

from train.plots import eval_curves, eval_panels, plot_run

RANGES = ["val_loss_t0-249", "val_loss_t250-499", "val_loss_t500-749", "val_loss_t750-999"]


def write_log(folder, evaluations: int):
    records = [{"step": step, "loss": 1.0 / step, "lr": 1e-3} for step in range(1, 201)]
    for k in range(1, evaluations + 1):
        records.append({"step": 50 * k, "eval": {"val_loss": 0.5 / k, **{name: 0.1 * i / k for i, name in enumerate(RANGES)},
                                                   "fid": 30.0 / k, "pixel_error": 0.1}})
    records.append({"step": 200, "eval": {"kid": 0.01}})  # measured once, at the end
    folder.mkdir()
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_a_metric_and_its_timestep_ranges_share_one_panel_and_single_points_get_none(tmp_path):
    panels, once = eval_panels(eval_curves(json.loads(line) for line in (write_log(tmp_path / "run", 4) / "log.jsonl").open()))
    assert sorted(panels) == ["fid", "pixel_error", "val_loss"]
    assert sorted(panels["val_loss"]) == sorted(["val_loss", *RANGES])
    assert panels["fid"]["fid"] == ([50, 100, 150, 200], [30.0, 15.0, 10.0, 7.5])
    assert once == {"kid": 0.01}


def test_loss_png_fits_one_screen(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_run(write_log(tmp_path / "run", 4))
    width, height = Image.open(path).size
    assert width <= 1600 and height <= 1000 and width / height < 3  # four panels in a grid, not a 3000 x 350 strip
    one_eval = plot_run(write_log(tmp_path / "single", 1))
    assert Image.open(one_eval).size[0] <= 600  # every metric measured once: the training panel alone
