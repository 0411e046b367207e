"""Fused cohorts: a cohort of K trains to the numbers of its K configurations trained alone (bit for bit with the
loop backend on CPU fp32, to float rounding with vmap), resumes exactly, masks failing members, stops members."""

import math

import pytest
import torch

from bvae_core import Trainer
from bvae_core.cohort import FAILED, STOPPED, Cohort, cohort_key, group_by_cohort
from bvae_core.trainer import load_model

#: vmap sums in another order than the single-model kernels: relative parameter difference after a few steps on
#: CPU fp32 (measured ≤ 4e-5 after 4 steps, ≤ 3e-4 with the capacity objective's mlp; room for other CPUs' kernels).
VMAP_RTOL = 2e-3


def _config(seed: int, arch: str = "mlp", schedule: str = "linear_capacity", steps: int = 8) -> dict:
    schedules = {
        "linear_capacity": {"kind": "linear_capacity", "c_max": 4.0 + seed, "ramp_steps": 5 + seed, "gamma": 2.0 + seed},
        "warmup": {"kind": "warmup", "warmup_steps": 3 + seed, "beta_start": 0.1 * seed},
        "constant": {"kind": "constant"},
    }
    return {
        "name": f"member-{seed}",
        "seed": seed,
        "dataset": {"name": "blobs", "resolution": 32},
        "model": {"arch": arch, "latent_dim": 3, "hidden": 32, "likelihood": {"kind": "bernoulli"}},
        "objective": {"beta": 0.5 + seed, "schedule": schedules[schedule]},
        "train": {"steps": steps, "batch_size": 8, "lr": 1e-3 * (1 + seed), "eval_every": steps, "n_eval": 32,
                  "log_every": 3, "device": "cpu", "threads": 1},  # a fixed thread count: the same kernels
    }  # fmt: skip


def _configs(arch: str = "mlp", schedule: str = "linear_capacity", k: int = 3, steps: int = 8) -> list[dict]:
    return [_config(seed, arch, schedule, steps) for seed in range(k)]


def _assert_same_state(trainer: Trainer, cohort: Cohort, k: int) -> None:
    a, b = trainer.state_dict(), cohort.member_state_dict(k)
    assert a["step"] == b["step"]
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), f"member {k}: {name} differs"
    assert a.keys() == b.keys()
    for opt in [key for key in a if key.endswith("optimizer")]:
        sa, sb = a[opt]["state"], b[opt]["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for key in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(sa[i][key], sb[i][key]), f"member {k}: {opt} {i}.{key} differs"
        assert a[opt]["param_groups"] == b[opt]["param_groups"]
    if "capacity_multiplier" in a:  # the capacity objective's λ
        assert torch.equal(a["capacity_multiplier"], b["capacity_multiplier"]), f"member {k}: λ differs"
    assert torch.equal(a["data_generator"], b["data_generator"])
    assert torch.equal(a["noise_generator"], b["noise_generator"])


@pytest.mark.parametrize(("arch", "schedule"), [("mlp", "linear_capacity"), ("burgess", "warmup"), ("conv", "constant")])
def test_loop_cohort_is_bit_identical_to_its_trainers(arch, schedule):
    configs = _configs(arch, schedule, steps=5)
    cohort = Cohort(configs, backend="loop")
    logged = []
    cohort.fit(5, on_log=logged.append)
    for k, config in enumerate(configs):
        trainer = Trainer(config)
        trainer_logs = []
        trainer.fit(5, on_log=trainer_logs.append)
        _assert_same_state(trainer, cohort, k)  # weights, BatchNorm buffers (conv), Adam moments, RNG states
        assert [m[k] for m in logged] == [{**t, "images_per_s": m[k]["images_per_s"]} for t, m in zip(trainer_logs, logged)]
        assert cohort.evaluate([k])[0] == trainer.evaluate()


@pytest.mark.parametrize(("arch", "schedule"), [("mlp", "warmup"), ("burgess", "warmup"), ("mlp", "linear_capacity"),
                                                ("burgess", "linear_capacity")])  # fmt: skip
def test_vmap_cohort_matches_its_trainers_to_float_rounding(arch, schedule):
    configs = _configs(arch, schedule, steps=4)
    cohort = Cohort(configs, backend="vmap")
    for k, config in enumerate(configs):  # same initial weights, exactly
        initial = Trainer(config).model.state_dict()
        assert all(torch.equal(t, cohort.member_state_dict(k)["model"][n]) for n, t in initial.items())
    cohort.fit(4)
    metrics = cohort.evaluate()
    for k, config in enumerate(configs):
        trainer = Trainer(config)
        trainer.fit(4)
        ours = cohort.member_state_dict(k)["model"]
        for name, t in trainer.model.state_dict().items():
            torch.testing.assert_close(ours[name], t, rtol=VMAP_RTOL, atol=VMAP_RTOL * t.abs().max().item())
        expected = trainer.evaluate()
        for key in ("rate", "distortion"):
            assert metrics[k][key] == pytest.approx(expected[key], rel=VMAP_RTOL, abs=1e-4)
        assert torch.equal(cohort.data_generators[k].get_state(), trainer.data_generator.get_state())


def test_vmap_conv_cohort_matches_its_trainers_to_batchnorms_amplified_rounding():
    """The conv arch's BatchNorm amplifies rounding: the bias of a layer before it has a gradient of rounding size,
    which Adam turns into steps of ±lr, so weights differ far beyond 1e-3 after a few steps (as they do between two
    Trainers that differ only in ``channels_last``). What a user reads — held-out rate and distortion — stays within
    2 % (measured: ≤ 0.9 %, a rate of a few hundredths of a nat); members sharing BatchNorm statistics would not."""
    configs = _configs("conv", "warmup", steps=4)
    cohort = Cohort(configs, backend="vmap")
    cohort.fit(4)
    metrics = cohort.evaluate()
    for k, config in enumerate(configs):
        trainer = Trainer(config)
        trainer.fit(4)
        expected = trainer.evaluate()
        for key in ("rate", "distortion"):
            assert metrics[k][key] == pytest.approx(expected[key], rel=2e-2, abs=1e-3)


def test_k1_cohort_is_the_trainer():
    config = _config(4)
    cohort, trainer = Cohort([config]), Trainer(config)
    assert cohort.backend == "loop"
    cohort.fit(6), trainer.fit(6)
    _assert_same_state(trainer, cohort, 0)


@pytest.mark.parametrize("backend", ["loop", "vmap"])
def test_resume_in_mid_cohort_continues_bit_identically(backend, tmp_path):
    configs = _configs(steps=10)
    straight = Cohort(configs, backend=backend)
    straight.fit(10)

    first = Cohort(configs, backend=backend)
    first.fit(4)  # mid-ramp, mid-log-interval
    first.save(tmp_path / "cohort.pt")
    resumed = Cohort.load(tmp_path / "cohort.pt")
    assert resumed.step == 4 and resumed.backend == backend
    resumed.fit(6)
    for k in range(len(configs)):
        a, b = straight.member_state_dict(k), resumed.member_state_dict(k)
        assert all(torch.equal(t, b["model"][n]) for n, t in a["model"].items())
    assert straight.evaluate() == resumed.evaluate()
    if backend == "loop":  # … and equal to each configuration trained alone, straight through
        for k, config in enumerate(configs):
            trainer = Trainer(config)
            trainer.fit(10)
            _assert_same_state(trainer, resumed, k)


def test_member_checkpoint_is_a_trainer_checkpoint(tmp_path):
    configs = _configs(steps=10)
    cohort = Cohort(configs, backend="loop")
    cohort.fit(4)
    cohort.save_member(1, tmp_path / "member1.pt")
    trainer = Trainer.load(tmp_path / "member1.pt")  # a plain Trainer continues the member …
    assert trainer.step == 4
    trainer.fit(6)
    alone = Trainer(configs[1])
    alone.fit(10)
    assert all(torch.equal(t, trainer.model.state_dict()[n]) for n, t in alone.model.state_dict().items())
    model, config = load_model(tmp_path / "member1.pt")  # … and loads as a plain model
    assert config.seed == 1 and config.train.lr == configs[1]["train"]["lr"]
    assert all(torch.equal(t, cohort.member_state_dict(1)["model"][n]) for n, t in model.state_dict().items())


@pytest.mark.parametrize("backend", ["loop", "vmap"])
def test_non_finite_member_is_masked_and_failed_while_the_others_train_on(backend):
    configs = _configs(steps=8)
    cohort, clean = Cohort(configs, backend=backend), Cohort(configs, backend=backend)
    cohort.fit(3), clean.fit(3)
    name = cohort.param_names[0]
    with torch.no_grad():
        cohort.params[name][1].view(-1)[0] = float("inf")  # member 1's next loss is not finite
    before = {n: t.clone() for n, t in cohort.member_state_dict(1)["model"].items()}
    logged = []
    cohort.fit(5, on_log=logged.append), clean.fit(5)
    assert cohort.status == ["active", FAILED, "active"]
    assert "non-finite" in cohort.errors[1] and "at step 4" in cohort.errors[1]  # its 4th update
    after = cohort.member_state_dict(1)
    assert after["step"] == 3  # its update at the bad step was skipped, and every one after
    assert all(torch.equal(t, after["model"][n]) for n, t in before.items())
    assert all(math.isnan(v) for m in logged[1:] for key, v in m[1].items() if key.startswith("train/"))
    for k in (0, 2):  # the others are exactly as if member 1 were healthy
        a, b = clean.member_state_dict(k)["model"], cohort.member_state_dict(k)["model"]
        assert all(torch.equal(t, b[n]) for n, t in a.items())
        assert all(math.isfinite(v) for key, v in logged[-1][k].items())


@pytest.mark.parametrize("backend", ["loop", "vmap"])
def test_stopped_member_stops_updating_and_keeps_its_checkpoint(backend, tmp_path):
    configs = _configs(steps=8)
    cohort = Cohort(configs, backend=backend)
    cohort.fit(3)
    cohort.stop(0)
    cohort.fit(3)
    assert cohort.status == [STOPPED, "active", "active"]
    assert cohort.member_steps(0) == 3 and cohort.member_steps(1) == 6
    cohort.save_member(0, tmp_path / "m0.pt")
    trainer = Trainer.load(tmp_path / "m0.pt")  # the member as of its stop: continuing it equals training alone
    trainer.fit(2)
    alone = Trainer(configs[0])
    alone.fit(5)
    tol = {} if backend == "loop" else {"rtol": VMAP_RTOL, "atol": 1e-6}
    for n, t in alone.model.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[n], t, **({"rtol": 0, "atol": 0} if not tol else tol))
    assert cohort.evaluate([0])[0]["step"] == 6.0


def test_configs_that_cannot_share_go_to_different_cohorts():
    a, b = _config(0), _config(1)
    assert cohort_key(a) == cohort_key(b)  # seed, β, C(t), γ, lr, name may differ
    other = _config(2)
    other["model"]["latent_dim"] = 5
    assert cohort_key(other) != cohort_key(a)
    with pytest.raises(ValueError, match=r"model\.latent_dim \(5 vs 3\)"):
        Cohort([a, b, other])
    kinds = _config(3, schedule="constant")
    with pytest.raises(ValueError, match=r"objective\.schedule\.kind"):
        Cohort([a, kinds])
    assert group_by_cohort([a, other, b, kinds, a], max_size=2) == [[0, 2], [4], [1], [3]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_cohort_equals_the_eager_cohort():
    configs = [{**c, "train": {**c["train"], "device": "cuda", "precision": "fp32"}} for c in _configs("burgess", steps=10)]
    deterministic = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True  # no atomics in the conv weight gradients: equal runs, equal bits
    try:
        eager, graphed = Cohort(configs, graphs=False), Cohort(configs, graphs=True)
        logged: dict[str, list] = {"eager": [], "graphed": []}
        eager.fit(10, on_log=logged["eager"].append)
        graphed.fit(10, on_log=logged["graphed"].append)
    finally:
        torch.backends.cudnn.deterministic = deterministic
    assert graphed._graph is not None, "capture fell back to eager"
    for k in range(len(configs)):
        a, b = eager.member_state_dict(k), graphed.member_state_dict(k)
        assert all(torch.equal(t, b["model"][n]) for n, t in a["model"].items())
        assert torch.equal(a["data_generator"], b["data_generator"])
    def timeless(logs: list) -> list:  # images_per_s is a timing
        return [[{n: v for n, v in m.items() if n != "images_per_s"} for m in members] for members in logs]
    assert logged["eager"] and timeless(logged["eager"]) == timeless(logged["graphed"])


def test_a_member_that_went_non_finite_since_the_last_sync_is_failed_not_stopped():
    """On CUDA the mask is written on the device and read at the next sync: a stop asked in between must not
    turn a diverged member into a stopped (PRUNED) one."""
    cohort = Cohort(_configs(steps=8), backend="vmap")
    cohort.fit(2)
    with torch.no_grad():  # what the step's on-device check writes when member 1's loss is not finite
        cohort._active[1] = False
        cohort._first_bad_step[1] = 2
    cohort.stop(1)
    assert cohort.status[1] == FAILED and "at step 3" in cohort.errors[1]
