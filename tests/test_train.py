"""Trainer behaviour: resume equality, divergence, run layout, evaluation."""
import json
import math
import re

import pandas as pd
import pytest
import torch
import yaml

from crossmatch import config
from crossmatch.errors import ConfigError, TrainingDiverged
from crossmatch.evaluate import evaluate_run
from crossmatch.train import train

from conftest import tiny_overrides


def _weights(path):
    return torch.load(path, weights_only=False)["model"]


@pytest.mark.parametrize("method,workers,precision", [
    ("crossmatch", 0, "fp32"), pytest.param("crossmatch", 1, "fp32", marks=pytest.mark.slow),
    ("supervised", 0, "fp32"), ("crossmatch", 0, "bf16")])
def test_killed_and_resumed_run_equals_uninterrupted(acdc_root, tmp_path, method, workers, precision):
    raw = tiny_overrides(acdc_root, iterations=6, ckpt_every=2, num_workers=workers, precision=precision)
    raw["method"] = {"name": method}
    cfg = config.resolve(raw)
    full = train(cfg, tmp_path / "full")
    # interrupted after iteration 3: the last checkpoint is at 2, iteration 3 is redone
    train(cfg, tmp_path / "cut", stop_after=3)
    assert not (tmp_path / "cut" / "checkpoints" / "final.pt").exists()
    (tmp_path / "cut" / "checkpoints" / "latest.pt").unlink()
    train(cfg, tmp_path / "cut", stop_after=2)          # from scratch to checkpoint 2
    resumed = train(cfg, tmp_path / "cut")               # resume 2 -> 6
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log_a = pd.read_csv(tmp_path / "full" / "log.csv")
    log_b = pd.read_csv(tmp_path / "cut" / "log.csv")
    assert list(log_b["iteration"]) == list(range(1, 7))
    pd.testing.assert_series_equal(log_a["loss"], log_b["loss"])


def test_log_has_every_loss_term_and_best_checkpoint(acdc_root, tmp_path):
    cfg = config.resolve(tiny_overrides(acdc_root))
    train(cfg, tmp_path / "run")
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    for col in ("lr", "loss", "sup", "ip_s1", "ip_s2", "tkd_w_dw", "tkd_w_ds", "tkd_s_dw",
                "tkd_s_ds", "dkd_dw", "dkd_ds", "mask_ratio", "val_dice"):
        assert col in log.columns, col
    assert log["val_dice"].notna().sum() == 2          # iterations 2 and 4
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=False)
    assert best["val_dice"] == log["val_dice"].max()
    assert log["lr"].iloc[0] == 0.01 and log["lr"].is_monotonic_decreasing


def test_total_loss_is_the_weighted_sum_of_terms(acdc_root):
    from crossmatch.methods.crossmatch import CrossMatch
    hp = CrossMatch.hyperparameters("acdc", {})
    w = CrossMatch(None, None, hp).weights(0)
    # reference form: (sup + .25 s1 + .25 s2 + 0.5 kd) / 2, kd = .7 mean(4 tkd) + .3 mean(2 dkd)
    assert w["sup"] == 0.5 and w["ip_s1"] == 0.125
    assert w["tkd_w_dw"] == pytest.approx(0.5 * 0.7 / 4 / 2)
    assert w["dkd_dw"] == pytest.approx(0.5 * 0.3 / 2 / 2)
    paper = CrossMatch(None, None, CrossMatch.hyperparameters("acdc", {"loss_form": "paper"})).weights(0)
    assert paper["sup"] == 1 and paper["ip_s1"] == 1 and paper["tkd_w_dw"] == pytest.approx(0.7 / 4)
    no_dkd = CrossMatch(None, None, CrossMatch.hyperparameters("acdc", {"dkd": False})).weights(0)
    assert no_dkd["dkd_dw"] == 0


@pytest.mark.parametrize("settings", [
    {"strong_views": 1}, {"tkd": False, "dkd": False}, {"loss_form": "paper", "eta": 1.0}])
def test_crossmatch_ablation_switches_train(acdc_root, tmp_path, settings):
    raw = tiny_overrides(acdc_root, iterations=2, val_every=0)
    raw["method"] = {"name": "crossmatch", **settings}
    raw["model"] = {"dropout_type": "feature_alpha"}
    train(config.resolve(raw), tmp_path / "run")
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    assert len(log) == 2 and log["loss"].notna().all()
    if settings.get("strong_views") == 1:
        assert "ip_s2" not in log.columns and "tkd_s_dw" in log.columns
    if settings.get("tkd") is False:
        assert not [c for c in log.columns if c.startswith(("tkd", "dkd"))]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_nan_loss_stops_with_experiment_and_iteration(acdc_root, tmp_path, monkeypatch, precision):
    import crossmatch.methods.supervised as sup
    real = sup.supervised_loss
    calls = {"n": 0}

    def flaky(*args):
        calls["n"] += 1
        ce, dice = real(*args)
        return (ce * float("nan"), dice) if calls["n"] == 3 else (ce, dice)

    monkeypatch.setattr(sup, "supervised_loss", flaky)
    raw = tiny_overrides(acdc_root, iterations=4, ckpt_every=2, val_every=0)
    raw["method"] = {"name": "supervised"}
    raw["train"]["precision"] = precision
    with pytest.raises(TrainingDiverged, match=rf"acdc/supervised/l3/precision{precision}/s0: loss is nan at iteration 3.*latest\.pt") as err:
        train(config.resolve(raw), tmp_path / "run")
    # under bf16 the message also names the fp32 way out
    assert ("train.precision: fp32" in str(err.value)) == (precision == "bf16")
    state = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=False)
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("model", [{}, {"upsample": "transpose"}])
def test_runs_written_before_evaluate_with_the_network_they_trained(acdc_root, tmp_path, model):
    """A run config without ``model.upsample`` (written before the key existed:
    bilinear) and one of a ``transpose`` run rebuild their own network."""
    import yaml
    cfg = config.resolve({**tiny_overrides(acdc_root, iterations=2, val_every=0), "model": dict(model)})
    train(cfg, tmp_path / "run")
    path = tmp_path / "run" / "config.yaml"
    written = yaml.safe_load(path.read_text())
    if not model:
        del written["model"]["upsample"]
    path.write_text(yaml.safe_dump(written))
    evaluate_run(tmp_path / "run", "final", "cpu", save_predictions=False)  # strict load: the same network


def test_evaluate_writes_per_case_metrics_and_summary(acdc_root, tmp_path):
    cfg = config.resolve(tiny_overrides(acdc_root))
    train(cfg, tmp_path / "run")
    for ckpt in ("final", "best"):
        s = evaluate_run(tmp_path / "run", ckpt, "cpu")
        out = tmp_path / "run" / "eval" / ckpt
        rows = pd.read_csv(out / "metrics_per_case.csv")
        assert len(rows) == 3 and set(rows["class_name"]) == {"RV", "Myo", "LV"}
        assert json.loads((out / "summary.json").read_text())["checkpoint"] == ckpt
        assert (out / "predictions" / "patient004_frame01.h5").is_file()
        assert 0 <= s["mean"]["dice"]["mean"] <= 1 and s["split"] == "test"


@pytest.mark.parametrize("override,message", [
    (["train.lr=fast"], "train.lr: expected float"),
    (["train.bogus=1"], "train.bogus: unknown key"),
    (["method.tau=2"], "method.tau must be in"),
    (["method.name=supervised", "method.tau=0.9"], "method.tau: not a hyperparameter of 'supervised'"),
    (["dataset.labeled=5"], "dataset.labeled: 5 has no split lists"),
    (["train.crop=[100,100]"], "train.crop: need 2 sizes divisible by 16"),
    (["model.dropout_type=gaussian"], "model.dropout_type must be"),
    (["method.source_pass=test"], "method.source_pass must be one of"),
    (["train.interpolation=cubic"], "train.interpolation must be one of"),
    (["eval.interpolation=cubic"], "eval.interpolation must be one of"),
    (["model.width=0"], "model.width must be in [1, inf), got 0"),
    (["train.crop=128"], "train.crop: need 2 sizes divisible by 16, e.g. [256, 256], got 128"),
    (["train.lr=0"], "train.lr must be in (0, inf), got 0"),
    (["train.lr=-0.01"], "train.lr must be in (0, inf), got -0.01"),
    (["train.momentum=5.0"], "train.momentum must be in [0, 1), got 5.0"),
    (["train.weight_decay=-0.0001"], "train.weight_decay must be in [0, inf)"),
    (["train.poly_power=-2.0"], "train.poly_power must be in [0, inf)"),
    (["train.seed=-1"], "train.seed must be in [0, inf), got -1"),
    (["train.data_seed=-1"], "train.data_seed must be in [0, inf), got -1"),
    (["train.num_workers=-1"], "train.num_workers must be in [0, inf)"),
    (["train.threads=-2"], "train.threads must be in [0, inf)"),
    (["eval.val_cases=-1"], "eval.val_cases must be in [0, inf)"),
    (["train.device=gpu"], "train.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    (["train.precision=fp8"], "train.precision must be one of ['auto', 'fp32', 'bf16', 'fp16']"),
    (["train.unlabeled_views=jpeg"], "train.unlabeled_views must be one of ['float', 'pil'], got 'jpeg'"),
    (["dataset.name=la", "train.unlabeled_views=pil"], "train.unlabeled_views: pil needs 2D images"),
    (["train.data_seed=1.5"], "train.data_seed must be an integer >= 0 or null"),
])
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.load(None, override)


def test_data_seed_fixes_the_data_stream_across_seeds(acdc_root, tmp_path, monkeypatch):
    """train.data_seed alone decides the batches (the reference codes' protocol:
    every seed one data order); weights still follow train.seed; unset, the
    data stream follows train.seed as before."""
    from crossmatch.train import Trainer
    seen: dict[str, list] = {}
    step = Trainer.step

    def spy(self, it, batch):
        seen.setdefault(self.run_dir.name, []).append(batch["x"].clone())
        return step(self, it, batch)
    monkeypatch.setattr(Trainer, "step", spy)

    def run(name, **t):
        raw = tiny_overrides(acdc_root, iterations=3, val_every=0, **t)
        raw["method"] = {"name": "supervised"}
        return _weights(train(config.resolve(raw), tmp_path / name))
    a, b = run("a", seed=0, data_seed=7), run("b", seed=1, data_seed=7)
    c, d = run("c", seed=0), run("d", seed=0, data_seed=0)
    assert all(torch.equal(x, y) for x, y in zip(seen["a"], seen["b"])) and len(seen["a"]) == 3
    assert not torch.equal(seen["a"][0], seen["c"][0])
    assert not all(torch.equal(a[k], b[k]) for k in a)      # other weights, same batches
    assert all(torch.equal(c[k], d[k]) for k in c)          # the default is train.seed
    with pytest.raises(ConfigError, match=re.escape("train.data_seed must be in [0, inf), got -1")):
        config.load(None, ["train.data_seed=-1"])


def test_acdc_trains_with_the_references_order_0_interpolation_by_default():
    """ACDC's weak view is zoomed and rotated with order 0, as every ACDC reference
    code does (worth about 10 Dice to supervised at the README budget,
    docs/fidelity.md); ISIC keeps linear; an explicit setting wins."""
    assert config.load(None, ["dataset.name=acdc"])["train"]["interpolation"] == "nearest"
    assert config.load(None, ["dataset.name=isic"])["train"]["interpolation"] == "linear"
    assert config.load(None, ["dataset.name=acdc", "train.interpolation=linear"])["train"]["interpolation"] == "linear"
    assert config.load(None, ["dataset.name=acdc"])["eval"]["interpolation"] == "linear"  # a protocol choice


def test_experiment_id_spells_settings():
    cfg = config.load(None, ["dataset.name=la", "dataset.labeled=8", "train.seed=1"])
    assert config.experiment_id(cfg) == "la/crossmatch/l8/tau0.75-eta0.3/s1"
    cfg = config.load(None, ["method.strong_views=1", "model.dropout_type=alpha"])
    assert config.experiment_id(cfg) == "acdc/crossmatch/l3/tau0.95-eta0.3-strong_views1-dropout_typealpha/s0"


def test_experiment_id_spells_train_switches_not_budget():
    """A train switch (interpolation, views, data seed, precision) changes what
    a run learns, so two settings must not share a run folder; the budget and
    the machine's threads are not spelled. ACDC's interpolation default is
    nearest (its preset), so nearest is not spelled there and linear is."""
    base = config.load(None, ["dataset.name=acdc", "train.iterations=7", "train.threads=1"])
    assert config.experiment_id(base) == "acdc/crossmatch/l3/tau0.95-eta0.3/s0"
    for setting, part in [("train.interpolation=linear", "interpolationlinear"),
                          ("train.unlabeled_views=pil", "unlabeled_viewspil"),
                          ("train.data_seed=1", "data_seed1"), ("train.precision=bf16", "precisionbf16")]:
        cfg = config.load(None, ["dataset.name=acdc", setting])
        assert config.experiment_id(cfg) == f"acdc/crossmatch/l3/tau0.95-eta0.3-{part}/s0"
    assert config.experiment_id(config.load(None, ["dataset.name=acdc", "train.interpolation=nearest"])) \
        == "acdc/crossmatch/l3/tau0.95-eta0.3/s0"
    # data_seed null is train.seed: seed 0 with data seed 0 is the default run
    assert config.experiment_id(config.load(None, ["train.data_seed=0"])).endswith("tau0.95-eta0.3/s0")
    la = config.load(None, ["dataset.name=la", "train.interpolation=nearest"])
    assert "interpolationnearest" in config.experiment_id(la)


def test_split_backward_gives_the_same_gradient_as_one_backward():
    import contextlib

    from crossmatch.data.specs import get_spec
    from crossmatch.methods.base import StepContext
    from crossmatch.methods.crossmatch import CrossMatch
    from crossmatch.models import build_model

    spec = get_spec("acdc")
    torch.manual_seed(0)
    batch = {"x": torch.rand(2, 1, 32, 32), "y": torch.randint(0, 4, (2, 32, 32)),
             "u": torch.rand(2, 1, 32, 32), "u_mix": torch.rand(2, 1, 32, 32)}
    grads = []
    for split in (True, False):
        torch.manual_seed(1)
        model = build_model(2, 1, 4)
        hp = CrossMatch.hyperparameters("acdc", {"split_backward": split, "tau": 0.3})
        ctx = StepContext(0, torch.Generator().manual_seed(2),
                          lambda loss: loss.backward(), contextlib.nullcontext)
        logs = CrossMatch(model, spec, hp).training_step(batch, ctx)
        assert logs["mask_ratio"] > 0
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fully_supervised_uses_every_training_case(acdc_root, tmp_path):
    raw = tiny_overrides(acdc_root, iterations=2, val_every=0)
    raw["method"] = {"name": "fully_supervised"}
    cfg = config.resolve(raw)
    assert cfg["dataset"]["labeled"] == "all"
    assert config.experiment_id(cfg) == "acdc/fully_supervised/lall/default/s0"
    from crossmatch.train import splits_for
    assert len(splits_for(cfg).labeled) == 12 and not splits_for(cfg).unlabeled
    train(cfg, tmp_path / "run")
    s = evaluate_run(tmp_path / "run", "best", "cpu")
    assert s["selection"] == "final weights (validation disabled)"


@pytest.mark.parametrize("method", ["crossmatch", "supervised"])
def test_3d_training_and_sliding_window_evaluation(la_root, tmp_path, method):
    raw = {"dataset": la_root, "method": {"name": method},
           "train": {"iterations": 2, "batch_size": 1, "crop": [32, 16, 16], "val_every": 2,
                     "ckpt_every": 2, "num_workers": 0}}
    cfg = config.resolve(raw)
    assert cfg["eval"]["stride"] == [18, 16, 4] and cfg["eval"]["val_stride"] == [16, 8, 8]
    train(cfg, tmp_path / "run")
    s = evaluate_run(tmp_path / "run", "final", "cpu")
    rows = pd.read_csv(tmp_path / "run" / "eval" / "final" / "metrics_per_case.csv")
    assert len(rows) == 1 and s["mean"]["hd95_mm"]["mean"] is not None


def test_resume_with_other_settings_is_refused(acdc_root, tmp_path):
    cfg = config.resolve(tiny_overrides(acdc_root, iterations=4))
    train(cfg, tmp_path / "run", stop_after=2)
    other = config.resolve({**tiny_overrides(acdc_root, iterations=4), "method": {"eta": 0.5}})
    with pytest.raises(ConfigError, match=r"other settings \(method.eta: 0.3 in the checkpoint, 0.5 now\)"):
        train(other, tmp_path / "run")
    # worker count may change between the two halves
    train(config.resolve(tiny_overrides(acdc_root, iterations=4, num_workers=1)), tmp_path / "run")


def test_runs_written_before_new_train_keys_resume(acdc_root, tmp_path):
    """A checkpoint written before train.unlabeled_views and train.data_seed
    existed (its config lacks them) trained with float views and its seed's
    data stream: it resumes under the defaults, and is refused under pil."""
    cfg = config.resolve(tiny_overrides(acdc_root, iterations=4, val_every=0))
    train(cfg, tmp_path / "run", stop_after=2)
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    state = torch.load(latest, weights_only=False)
    for key in ("unlabeled_views", "data_seed"):
        del state["config"]["train"][key]
    torch.save(state, latest)
    with pytest.raises(ConfigError, match=r"train.unlabeled_views: 'float' in the checkpoint, 'pil' now"):
        train(config.resolve(tiny_overrides(acdc_root, iterations=4, val_every=0, unlabeled_views="pil")),
              tmp_path / "run")
    train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "final.pt").is_file()


def test_changed_settings_restart_afresh_when_asked(acdc_root, tmp_path, capsys):
    """The workflow's train job (--restart-if-changed): a run whose settings
    changed is moved to superseded/ and trained from iteration 0."""
    run = tmp_path / "run"
    train(config.resolve(tiny_overrides(acdc_root, iterations=4)), run, stop_after=2)
    old_latest = (run / "checkpoints/latest.pt").read_bytes()
    other = config.resolve({**tiny_overrides(acdc_root, iterations=4), "method": {"eta": 0.5}})
    train(other, run, restart_if_changed=True)
    assert "the settings changed (method.eta: 0.3 in the checkpoint, 0.5 now)" in capsys.readouterr().out
    (moved,) = (run / "superseded").iterdir()
    assert (moved / "checkpoints/latest.pt").read_bytes() == old_latest
    assert len(pd.read_csv(moved / "log.csv")) == 2
    log = pd.read_csv(run / "log.csv")
    assert log["iteration"].tolist() == [1, 2, 3, 4]        # afresh, not resumed at 2
    assert yaml.safe_load((run / "config.yaml").read_text())["method"]["eta"] == 0.5


def test_stride_larger_than_crop_is_rejected():
    with pytest.raises(ConfigError, match=r"eval.stride: need 3 strides in \[1, train.crop"):
        config.load(None, ["dataset.name=la", "train.crop=[32,32,32]", "eval.stride=[48,8,8]"])


def test_precision_is_picked_per_device_and_recorded(acdc_root, tmp_path):
    """train.precision: auto is fp32 on CPU, bf16 runs on CPU when asked (and the
    run's config.yaml says what ran), fp16 needs CUDA; a run config written with
    the former train.amp resolves to what it trained with."""
    from crossmatch.factories import pick_precision
    cpu = torch.device("cpu")
    assert pick_precision("auto", cpu).name == "fp32" and not pick_precision("auto", cpu).scaler
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        pick_precision("fp16", cpu)
    with pytest.raises(ConfigError, match=r"train.precision must be one of \['auto', 'fp32', 'bf16', 'fp16'\]"):
        config.resolve({"train": {"precision": "fp8"}})
    assert config.resolve({"train": {"amp": True}})["train"]["precision"] == "fp16_cuda"
    assert config.resolve({"train": {"amp": False}})["train"]["precision"] == "fp32"
    assert pick_precision("fp16_cuda", cpu).name == "fp32"
    with pick_precision("bf16", cpu).autocast():
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.bfloat16
    cfg = config.resolve(tiny_overrides(acdc_root, iterations=2, precision="bf16"))
    train(cfg, tmp_path / "run")
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["train_precision"] == "bf16 on cpu"
    assert all(math.isfinite(v) for v in pd.read_csv(tmp_path / "run" / "log.csv")["loss"])
