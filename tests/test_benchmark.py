"""The step benchmark runs every variant it reports (batch 1, one timed step)
and counts each step's arithmetic."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from crossmatch.models.unet2d import UNet2d

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_benchmark.py"


@pytest.mark.parametrize("variant", ["network", "supervised", "crossmatch", "crossmatch_looped", "unimatch",
                                     "semsim"])
def test_step_benchmark_variant_reports_a_timed_step(variant, tmp_path):
    r = _single(variant)
    assert r["variant"] == variant and r["crop"] == [256, 256]
    assert r["batch"] == ("1" if variant in ("network", "supervised") else "1+1+1")
    assert len(r["seconds_all"]) == 1 and r["seconds_per_iter"] > 0 and r["peak_rss_gib"] > 0
    assert r["gflop_per_iter"] > 0 and r["gflop_per_s"] == pytest.approx(r["gflop_per_iter"] / r["seconds_per_iter"])


def _single(variant: str, batch: int = 1, crop: tuple[int, ...] = ()) -> dict:
    out = subprocess.run([sys.executable, str(SCRIPT), "--single", "--dataset", "acdc", "--variants", variant,
                          "--batch", str(batch), "--iters", "1", "--warmup", "0", "--threads", "1"]
                         + (["--crop", *map(str, crop)] if crop else []),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])



def test_step_benchmark_times_the_vnet_in_channels_last_3d_memory(tmp_path):
    """--memory-formats: the V-Net and its inputs in channels_last_3d, timed
    back to back with the contiguous step in every precision asked for, with
    the same arithmetic (a memory format changes no result)."""
    out = tmp_path / "formats.json"
    subprocess.run([sys.executable, str(SCRIPT), "--dataset", "la", "--variants", "network", "--allocators", "default",
                    "--precision", "fp32", "bf16", "--memory-formats", "contiguous", "channels_last", "--batch", "1",
                    "--crop", "32", "32", "32", "--iters", "1", "--warmup", "0", "--threads", "1", "--out", str(out)],
                   capture_output=True, text=True, check=True)
    res = json.loads(out.read_text())["results"]
    assert [(r["precision"], r["channels_last"]) for r in res] == [
        ("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
    assert len({r["gflop_per_iter"] for r in res}) == 1


def test_flop_count_scales_with_the_batch_and_shows_what_stacking_costs():
    """The README reads GFLOP/s to tell machine speed from code speed. The
    count is linear in the batch and the pixels (a convolutional network), and
    stacked CrossMatch does exactly one decoder backward more than looped:
    pass 2's clean weak-view stream is detached (the teacher), so looped
    autograd skips its decoder, while in the stacked batch it shares the
    batch-norm statistics of the other streams, so gradient reaches it."""
    one, two = _single("network", 1, (64, 64)), _single("network", 2, (64, 64))
    assert two["crop"] == [64, 64]
    assert two["gflop_per_iter"] == pytest.approx(2 * one["gflop_per_iter"], rel=1e-9)
    four_pixels = _single("network", 1, (128, 128))
    assert four_pixels["gflop_per_iter"] == pytest.approx(4 * one["gflop_per_iter"], rel=1e-9)

    model = UNet2d()
    feats = [f.detach().requires_grad_() for f in model.encoder(torch.rand(1, 1, 64, 64))]
    out = model.decoder(feats)
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    decoder_backward = counter.get_total_flops() / 1e9
    stacked, looped = _single("crossmatch", 1, (64, 64)), _single("crossmatch_looped", 1, (64, 64))
    assert stacked["gflop_per_iter"] - looped["gflop_per_iter"] == pytest.approx(decoder_backward, rel=1e-9)


def test_median_step_seconds_leaves_out_validation_iterations(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from summarise_runs import median_step_seconds
    finally:
        sys.path.remove(str(SCRIPT.parent))
    log = tmp_path / "log.csv"
    # cumulative seconds: 1 s steps, and a 30 s validation at iteration 4
    log.write_text("iteration,loss,seconds,val_dice\n1,0.9,1.0,\n2,0.8,2.0,\n3,0.7,3.0,\n4,0.6,34.0,0.5\n"
                   "5,0.5,35.0,\n6,0.4,36.0,\n")
    assert median_step_seconds(log) == 1.0
    assert median_step_seconds(tmp_path / "absent.csv") is None


def test_reference_comparison_pools_the_seed_variances(tmp_path):
    """benchmarks/reference/compare.py: the acceptance test of the fidelity issue
    (|mean difference| within one pooled standard deviation)."""
    script = SCRIPT.parent / "reference" / "compare.py"

    def runs(path, dice):
        rows = [{"method": "crossmatch", "checkpoint": "final", "seed": s, "dice": d} for s, d in enumerate(dice)]
        path.write_text(json.dumps({"runs": rows}))
        return str(path)

    out = tmp_path / "parity.json"
    res = subprocess.run([sys.executable, str(script), runs(tmp_path / "a.json", [0.40, 0.50, 0.60]),
                          runs(tmp_path / "b.json", [0.30, 0.40]), "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    row = json.loads(out.read_text())["rows"][0]
    # sums of squares 0.02 + 0.005 over 2 + 1 degrees of freedom
    assert row["pooled_std"] == pytest.approx((0.025 / 3) ** 0.5)
    assert row["difference"] == pytest.approx(0.15) and row["within_one_pooled_std"] is False


def test_reference_comparison_joins_summaries_of_seeds_run_apart(tmp_path):
    """Seeds summarised in separate files (run on different days) count together;
    a seed given twice on one side is refused."""
    script = SCRIPT.parent / "reference" / "compare.py"

    def runs(name, seeds):
        rows = [{"method": "supervised", "checkpoint": "best", "seed": s, "dice": d} for s, d in seeds.items()]
        (tmp_path / name).write_text(json.dumps({"runs": rows}))
        return str(tmp_path / name)

    a, b = runs("a01.json", {0: 0.4, 1: 0.5}), runs("a2.json", {2: 0.6})
    ref = runs("r.json", {0: 0.3, 1: 0.4})
    out = tmp_path / "parity.json"
    res = subprocess.run([sys.executable, str(script), f"{a},{b}", ref, "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    row = json.loads(out.read_text())["rows"][0]
    assert row["ours"] == {"0": 0.4, "1": 0.5, "2": 0.6} and row["ours_mean"] == pytest.approx(0.5)
    res = subprocess.run([sys.executable, str(script), f"{a},{a}", ref], capture_output=True, text=True)
    assert res.returncode != 0 and "seed 0 given twice" in res.stderr
    # seed 0 again, with another data stream (train.data_seed): a run of its own
    rows = [{"method": "supervised", "checkpoint": "best", "seed": 0, "data_seed": 1, "dice": 0.7}]
    (tmp_path / "d.json").write_text(json.dumps({"runs": rows}))
    res = subprocess.run([sys.executable, str(script), f"{a},{b},{tmp_path / 'd.json'}", ref, "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    row = json.loads(out.read_text())["rows"][0]
    assert row["ours"] == {"0": 0.4, "1": 0.5, "2": 0.6, "0/data1": 0.7} and row["ours_mean"] == pytest.approx(0.55)


def test_summaries_name_a_runs_own_data_seed(tmp_path):
    """summarise_runs.py records train.data_seed where a run set one, so that
    compare.py counts it apart from the run of the same seed."""
    for folder, ds in (("a", None), ("b", 1)):
        _fake_run(tmp_path / folder, "crossmatch", 0, 0.5, 0.6)
        for ckpt in ("final", "best"):
            f = tmp_path / folder / "crossmatch" / "s0" / "eval" / ckpt / "summary.json"
            f.write_text(json.dumps({"mean": {"dice": {"mean": 0.5}, "hd95_vox": {"mean": 3.0},
                                              "asd_vox": {"mean": 1.0}}, "per_class": {"1": {"dice": {"mean": 0.5}}},
                                     "class_names": ["LV"], "iteration": 4, "n_test_cases": 1,
                                     "seconds_per_iteration": 1.0}))
        (tmp_path / folder / "crossmatch" / "s0" / "config.yaml").write_text(
            yaml.safe_dump({"train": {"seed": 0, "data_seed": ds}}))
        res = subprocess.run([sys.executable, str(SCRIPT.parent / "summarise_runs.py"), str(tmp_path / folder),
                              "--out", str(tmp_path / f"{folder}.json")], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    assert "data_seed" not in json.loads((tmp_path / "a.json").read_text())["runs"][0]
    assert json.loads((tmp_path / "b.json").read_text())["runs"][0]["data_seed"] == 1
    assert "| 0 (data 1) |" in res.stdout



SPEED = SCRIPT.parent / "reference" / "speed_vs_reference.py"


def test_speed_benchmark_without_the_reference_says_so(tmp_path):
    res = subprocess.run([sys.executable, str(SPEED), "--reference", str(tmp_path / "absent"),
                          "--out", str(tmp_path / "speed.json")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "skipped: no reference code at" in res.stdout and not (tmp_path / "speed.json").exists()


def test_speed_benchmark_ratios_pair_runs_of_one_round_and_judge_the_targets():
    """Ratios are taken within a round (side by side, back to back), then the
    median over rounds; each target is judged on our faster precision."""
    sys.path.insert(0, str(SPEED.parent))
    try:
        from speed_vs_reference import ratios, targets
    finally:
        sys.path.remove(str(SPEED.parent))
    runs = []
    for r, slow in ((0, 1.0), (1, 2.0)):  # round 1: the host at half speed, for both sides
        for method, impl, prec, s, mem in (("crossmatch", "reference", "fp32", 2.0, 2.0),
                                           ("crossmatch", "ours", "fp32", 1.2, 1.0),
                                           ("crossmatch", "ours", "bf16", 0.6, 0.9),
                                           ("supervised", "reference", "fp32", 0.25, 0.6),
                                           ("supervised", "ours", "fp32", 0.2, 0.5),
                                           ("supervised", "ours", "bf16", 0.12, 0.5)):
            runs.append({"round": r, "method": method, "impl": impl, "precision": prec,
                         "seconds_per_iteration": s * slow, "peak_rss_gib": mem})
    rat = ratios(runs, 2)
    assert rat["crossmatch_time_ours_bf16_vs_reference"] == {"median": 0.3, "rounds": [0.3, 0.3]}
    assert rat["crossmatch_peak_memory_ours_fp32_vs_reference"]["median"] == 0.5
    assert rat["crossmatch_vs_supervised_ours_fp32"]["median"] == 6.0
    assert rat["crossmatch_vs_supervised_reference"]["median"] == 8.0
    t = targets(rat)
    assert t["crossmatch_time_vs_reference"] == {"target": 0.35, "measured": 0.3, "met": True}
    assert t["crossmatch_peak_memory_vs_reference"]["measured"] == 0.45
    assert t["crossmatch_vs_supervised_ours"]["met"] is True  # fp32 6.0, bf16 5.0

@pytest.mark.slow
def test_gpu_check_smoke_answers_every_question_and_resumes_exactly(tmp_path):
    """benchmarks/gpu_check.py waits for a GPU that most sessions never get:
    its ``--smoke`` run on the CPU must fill every section (a step row per
    method x precision, stacked and looped; an inference row per precision
    and window batch; the command line trained, resumed and evaluated), and
    the resumed run's weights equal the uninterrupted run's (exact on CPU)."""
    out = tmp_path / "gpu_check.json"
    res = subprocess.run([sys.executable, str(SCRIPT.parent / "gpu_check.py"), "--smoke", "--iters", "1",
                          "--warmup", "0", "--reps", "1", "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["errors"] == {} and doc["smoke"] is True
    steps = {(r["dataset"], r["variant"], r["precision"]) for r in doc["steps"]}
    for dataset, extra in (("acdc", "semsim"), ("la", "simcvd")):
        for variant in ("network", "supervised", "crossmatch", "crossmatch_looped", "unimatch", extra):
            assert {(dataset, variant, p) for p in ("fp32", "bf16")} <= steps
    assert all(r["seconds_per_iter"] > 0 and r["gflop_per_iter"] > 0 for r in doc["steps"])
    la = [r for r in doc["inference"] if r["dataset"] == "la"]
    assert {(r["precision"], r["window_batch"]) for r in la} == {(p, b) for p in ("fp32", "bf16") for b in (1, 4, 16)}
    assert [r["dataset"] for r in doc["end_to_end"]] == ["acdc", "la"]
    for r in doc["end_to_end"]:
        assert r["resumed_max_abs_weight_diff"] == 0.0
        assert r["train_precision"] == "fp32 on cpu" and 0.0 <= r["test_dice"] <= 1.0


def test_gpu_check_without_a_gpu_says_so_and_names_the_smoke_run(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the check would run")
    out = tmp_path / "gpu_check.json"
    res = subprocess.run([sys.executable, str(SCRIPT.parent / "gpu_check.py"), "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "no CUDA device here" in res.stderr and "--smoke" in res.stderr
    assert not out.exists()


PARITY = SCRIPT.parent / "precision_parity.py"


def _fake_run(folder: Path, method: str, seed: int, final: float, best: float) -> None:
    run = folder / method / f"s{seed}"
    for ckpt, dice in (("final", final), ("best", best)):
        (run / "eval" / ckpt).mkdir(parents=True)
        (run / "eval" / ckpt / "summary.json").write_text(json.dumps({"mean": {"dice": {"mean": dice}}}))
    (run / "log.csv").write_text("iteration,loss,seconds,val_dice\n1,0.9,1.0,\n2,0.7,2.0,0.4\n3,0.5,3.0,\n4,0.4,4.0,0.5\n")


def test_precision_parity_pairs_seeds_and_judges_the_mean_against_the_seed_noise(tmp_path):
    """bf16 minus fp32 per seed, only seeds on both sides; the mean judged
    against the pooled std over seeds; the overlay figure is written."""
    for seed, (f32, b16) in enumerate(((0.50, 0.46), (0.40, 0.38), (0.60, 0.60))):
        _fake_run(tmp_path / "fp32", "crossmatch", seed, f32, f32 + 0.05)
        _fake_run(tmp_path / "bf16", "crossmatch", seed, b16, b16 + 0.05)
    _fake_run(tmp_path / "fp32", "crossmatch_only_here", 0, 0.5, 0.5)
    _fake_run(tmp_path / "bf16", "supervised", 0, 0.3, 0.3)  # no fp32 partner: left out
    out = tmp_path / "parity.json"
    res = subprocess.run([sys.executable, str(PARITY), "--fp32", str(tmp_path / "fp32"), "--bf16", str(tmp_path / "bf16"),
                          "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    rows = {(r["method"], r["checkpoint"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {("crossmatch", "final"), ("crossmatch", "best")}
    final = rows["crossmatch", "final"]
    assert [round(d, 6) for d in final["paired_difference"].values()] == [-0.04, -0.02, 0.0]
    assert final["mean_paired_difference"] == pytest.approx(-0.02)
    # pooled variance of (0.5, 0.4, 0.6) and (0.46, 0.38, 0.6): (0.02 + 0.0248) / 4 dof
    assert final["seed_noise_pooled_std"] == pytest.approx((0.0448 / 4) ** 0.5, rel=1e-6)
    assert final["within_seed_noise"] is True
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_loss_terms_puts_our_log_in_the_reference_logs_terms(tmp_path):
    """The reference prints per-epoch running means (over the epoch's first
    Iters + 1 iterations); ours are averaged over the same iterations, with
    Loss s and Loss KD formed from our terms as the reference's script forms them."""
    sys.path.insert(0, str(SCRIPT.parent / "reference"))
    try:
        from loss_terms import our_epochs, our_intervals, plateau_exit, reference_epochs, reference_intervals
    finally:
        sys.path.remove(str(SCRIPT.parent / "reference"))
    log = tmp_path / "train.log"
    log.write_text("[t][ INFO] ===========> Epoch: 0, LR: 0.01000, Previous best: 0.00, TH: 0.9500\n"
                   "[t][ INFO] Iters: 0, Total loss: 0.9, Loss x: 1.0, Loss s: 0.8, Loss KD: 0.7, Mask ratio: 0.1\n"
                   "[t][ INFO] Iters: 1, Total loss: 0.8, Loss x: 0.9, Loss s: 0.7, Loss KD: 0.6, Mask ratio: 0.2\n"
                   "[t][ INFO] ===========> Epoch: 1, LR: 0.00900, Previous best: 0.00, TH: 0.9500\n"
                   "[t][ INFO] Iters: 0, Total loss: 0.5, Loss x: 0.4, Loss s: 0.3, Loss KD: 0.2, Mask ratio: 0.9\n")
    ref = reference_epochs(log)
    assert ref == {0: {"iters": 2, "loss_x": 0.9, "loss_s": 0.7, "loss_kd": 0.6, "mask_ratio": 0.2},
                   1: {"iters": 1, "loss_x": 0.4, "loss_s": 0.3, "loss_kd": 0.2, "mask_ratio": 0.9}}
    terms = ["sup", "ip_s1", "ip_s2", "tkd_w_dw", "tkd_w_ds", "tkd_s_dw", "tkd_s_ds", "dkd_dw", "dkd_ds", "mask_ratio"]
    rows = [[1, *[0.2] * 10], [2, *[0.4] * 10], [3, *[0.9] * 10], [4, 1.0, 0.1, 0.3, 0.1, 0.1, 0.1, 0.5, 0.2, 0.4, 0.5]]
    pd_rows = "\n".join(",".join(map(str, r)) for r in rows)
    (tmp_path / "log.csv").write_text("iteration," + ",".join(terms) + "\n" + pd_rows + "\n")
    ours = our_epochs(tmp_path / "log.csv", epoch_length=3, spans={0: 2, 1: 1}, eta=0.3)
    assert ours[0]["loss_x"] == pytest.approx(0.3) and ours[0]["mask_ratio"] == pytest.approx(0.3)
    # epoch 1 = iteration 4: s = (0.1 + 0.3) / 2, kd = 0.7 * mean(0.1, 0.1, 0.1, 0.5) + 0.3 * mean(0.2, 0.4)
    assert ours[1]["loss_s"] == pytest.approx(0.2)
    assert ours[1]["loss_kd"] == pytest.approx(0.7 * 0.2 + 0.3 * 0.3)
    # intervals between printed lines, from the running means: iteration 2 alone is 2 x 0.7 - 0.8
    iv = reference_intervals(log, epoch_length=3)
    assert [(i["end"], i["iterations"]) for i in iv] == [(1, 1), (2, 1), (4, 1)]
    assert iv[1]["loss_s"] == pytest.approx(0.6) and iv[1]["loss_x"] == pytest.approx(0.8)
    assert [i["loss_x"] for i in our_intervals(tmp_path / "log.csv", iv, eta=0.3)] == pytest.approx([0.2, 0.4, 1.0])
    # the plateau exit: the first long enough interval under the threshold once 0.75 was reached
    flat = lambda *s: [{"end": 38 * (k + 1), "iterations": 38, "loss_s": v} for k, v in enumerate(s)]  # noqa: E731
    assert plateau_exit(flat(0.6, 0.75, 0.75, 0.72, 0.65, 0.4)) == 190  # the early 0.6 is before the plateau
    assert plateau_exit(flat(0.6, 0.75, 0.75, 0.75)) is None
    assert plateau_exit(flat(0.75) + [{"end": 39, "iterations": 1, "loss_s": 0.3}]) is None
    # nor does a one-iteration first line reach the plateau
    assert plateau_exit([{"end": 1, "iterations": 1, "loss_s": 0.77}] + flat(0.6, 0.6)) is None


def test_precision_parity_and_loss_terms_name_what_is_missing(tmp_path):
    """No pair of runs, a run not evaluated at one checkpoint, a reference log
    without its loss lines: each stops with the file or the fix named."""
    _fake_run(tmp_path / "fp32", "crossmatch", 0, 0.5, 0.5)
    _fake_run(tmp_path / "bf16", "crossmatch", 1, 0.5, 0.5)
    cmd = [sys.executable, str(PARITY), "--fp32", str(tmp_path / "fp32"), "--bf16", str(tmp_path / "bf16"),
           "--out", str(tmp_path / "p.json")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode != 0 and "no (method, seed) is evaluated on both sides" in res.stderr
    _fake_run(tmp_path / "bf16", "crossmatch", 0, 0.5, 0.5)
    (tmp_path / "bf16" / "crossmatch" / "s0" / "eval" / "best" / "summary.json").unlink()
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode != 0 and "best/summary.json missing: evaluate the run" in res.stderr
    assert not (tmp_path / "p.json").exists()
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "train.log").write_text("[t][ INFO] ===========> Epoch: 0, LR: 0.01000\n")
    res = subprocess.run([sys.executable, str(SCRIPT.parent / "reference" / "loss_terms.py"), "--ours",
                          str(tmp_path / "fp32" / "crossmatch" / "s0"), "--reference", str(tmp_path / "ref")],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "train.log: no 'Iters: ...' lines" in res.stderr


def test_every_committed_benchmark_result_has_its_provenance():
    """Every JSON under benchmarks/results/ says where it came from: commit,
    command, date, torch, device and CPU (the scripts record it; older files
    carry a record backfilled from git history, which says so)."""
    import json
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    files = sorted(results.glob("*.json"))
    assert len(files) >= 70
    for f in files:
        prov = json.loads(f.read_text()).get("provenance")
        assert isinstance(prov, dict) and {"commit", "command", "date", "torch", "device", "cpu"} <= set(prov), f.name
