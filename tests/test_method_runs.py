"""Every method added on the shared trainer trains and evaluates through the
command line in 2D and 3D, as a user runs it: its own log columns, its
method-owned modules in the resumable checkpoint (not in the network's
weights), its experiment id."""
import json

import pytest
import torch

from conftest import tiny_overrides, train_and_evaluate_cli

METHODS = {  # method settings, log columns of its own, method-owned modules (checkpoint prefixes)
    "uamt": ({}, {"sup", "cons", "w_cons", "threshold", "mask_ratio"}, {"teacher"}),
    "mcnet": ({}, {"sup", "cons", "w_cons", "sup_dice2"}, {"decoder2"}),
    "bcp": ({"pretrain_fraction": 0.5}, {"stage", "loss_l", "loss_u", "pseudo_fg"}, {"teacher"}),
}


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_and_evaluates_through_the_command_line(acdc_root, la_root, tmp_path, name, dim):
    settings, columns, extras = METHODS[name]
    root, crop = (acdc_root, [32, 32]) if dim == 2 else (la_root, [32, 32, 16])
    run = train_and_evaluate_cli({**tiny_overrides(root, iterations=4, crop=crop),
                                  "method": {"name": name, **settings}}, tmp_path)
    assert columns <= set((run / "log.csv").read_text().splitlines()[0].split(","))
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=False)
    assert {k.split(".")[0] for k in state["method"]} == extras
    assert not any(k.split(".")[0] in extras for k in state["model"])
    summary = json.loads((run / "eval/best/summary.json").read_text())
    assert summary["experiment"].startswith(f"{'acdc' if dim == 2 else 'la'}/{name}/")
