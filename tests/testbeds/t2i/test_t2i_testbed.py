"""The t2i_digits testbed in the shared loop: a tiny frozen T5 and a tiny PixArt teacher written by the toy's own
builders, loaded through the run config; classifier-free guidance of the teacher's score by hand; SIM's loss on
PixArt networks with text conditioning passes the checks it passes on digits (SIM-L2 = 2 SiD(alpha = 1) with equal
weighting, gradients through x_t into both networks); a short distillation logs Table 3's metrics; bad inputs fail
in one line before any work."""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from baselines.sid import SiDLoss
from sim_core.core.distances import build_distance
from sim_core.core.generator import OneStepGenerator
from sim_core.core.losses import NoiseDraw, per_sample_dot
from sim_core.core.sim_loss import SIMLoss
from sim_core.core.time_dists import build_time_distribution
from sim_core.errors import CheckpointError, ConfigError
from sim_core.testbeds import TESTBEDS, load_testbed
from sim_core.testbeds.t2i.cond import TextCond
from sim_core.testbeds.t2i.edm_pixart import GuidedDenoiser
from sim_core.testbeds.t2i.teacher import train_toy_teacher
from sim_core.testbeds.t2i.toy import build_toy_t5

TINY_DIT = dict(num_layers=1, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16)
DT = torch.float64


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    build_toy_t5(root / "t5")
    train_toy_teacher(root / "teacher", root / "t5", iterations=3, batch_size=8, dit=TINY_DIT, max_tokens=16)
    return root


def config(root, **kw):
    return TESTBEDS.get("t2i_digits").config(teacher=str(root / "teacher"), text_encoder=str(root / "t5"), **kw)


@pytest.fixture(scope="module")
def testbed(toy_files):
    return load_testbed(config(toy_files))


def test_the_testbed_loads_the_toy_files_and_draws_text_conditioning(testbed):
    assert testbed.data_shape == (4, 4, 4) and testbed.label_dim == 0
    assert testbed.meta["sigma_max"] == pytest.approx(156.6155, abs=1e-4)
    assert isinstance(testbed.D_teacher, GuidedDenoiser) and testbed.D_teacher.guidance == 4.5
    assert testbed.D_init is testbed.D_teacher.D  # G and D_psi start from the unguided network
    assert len(testbed.train_prompts) == 40 and len(testbed.eval_prompts) == 60
    a = testbed.draw_cond(8, torch.Generator().manual_seed(1))
    b = testbed.draw_cond(8, torch.Generator().manual_seed(1))
    assert isinstance(a, TextCond) and a.states.shape == (8, 16, 32) and torch.equal(a.states, b.states)
    # each drawn row is one of the training prompts' encodings
    table = testbed.train_table.states.reshape(40, -1)
    assert all(bool((table == row).all(1).any()) for row in a.states.reshape(8, -1))


def test_caption_dropout_replaces_that_share_by_the_null_caption(toy_files):
    tb = load_testbed(config(toy_files, caption_dropout=0.5))
    cond = tb.draw_cond(400, torch.Generator().manual_seed(0))
    null = (cond.states == tb.null.states).reshape(400, -1).all(1)
    assert 0.4 < null.double().mean().item() < 0.6
    assert torch.equal(cond.mask[null], tb.null.mask.expand(int(null.sum()), -1))


def test_guidance_is_the_null_plus_w_times_the_text_difference(testbed):
    D = copy.deepcopy(testbed.D_init).to(DT)  # float64: at sigma = 100, D = x - 100 eps magnifies float32 rounding
    x = torch.randn(6, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=DT)
    sigma = torch.tensor([0.02, 0.3, 1.0, 2.5, 10.0, 100.0], dtype=DT)
    cond, null1 = testbed.eval_table[:6].to(DT), testbed.null.to(DT)
    null = TextCond(null1.states.expand(6, -1, -1), null1.mask.expand(6, -1))
    with torch.no_grad():
        d_text, d_null = D(x, sigma, cond), D(x, sigma, null)
        for w in (0.0, 1.0, 4.5):
            got = GuidedDenoiser(D, null1, w)(x, sigma, cond)
            torch.testing.assert_close(got, d_null + w * (d_text - d_null), rtol=1e-12, atol=1e-10)
        assert torch.equal(GuidedDenoiser(D, null1, 1.0)(x, sigma, cond), d_text)
        assert (d_text - d_null).abs().max() > 1e-3  # the text matters


def networks(testbed, seed=0):
    """teacher (guided), fake and generator in float64, all PixArt in SIM's EDM form."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        teacher = copy.deepcopy(testbed.D_teacher).to(DT).requires_grad_(False)
        fake = copy.deepcopy(testbed.D_init).to(DT)
        for p in fake.parameters():  # a fake network that has moved away from the teacher
            p.data.add_(0.05 * torch.randn_like(p))
        fake.requires_grad_(False)
        G = OneStepGenerator.from_teacher(testbed.D_init.to(DT), 2.5).requires_grad_(True)
        rng = torch.Generator().manual_seed(seed)
        cond = testbed.draw_cond(12, rng, dtype=DT)
        z = G.sample_z(12, testbed.data_shape, rng, DT)
        draw = build_time_distribution("t2i").sample(12, rng, DT)
        eps = torch.randn((12, *testbed.data_shape), generator=rng, dtype=DT)
    testbed.D_init.float()
    return teacher, fake, G, z, cond, NoiseDraw(sigma=draw, eps=eps)


def grad_of(G, loss):
    g = torch.autograd.grad(loss.mean(), list(G.parameters()), allow_unused=True)
    return torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(g, G.parameters())])


def test_sim_l2_is_twice_sid_alpha_1_on_pixart_with_text(testbed):
    teacher, fake, G, z, cond, draw = networks(testbed)
    td = build_time_distribution("t2i")
    L_sim = SIMLoss(build_distance("l2"), td, weighting="nowgt").loss(G(z, cond), cond, teacher, fake, draw)
    g_sim = grad_of(G, L_sim)
    L_sid = SiDLoss(td, weighting="nowgt", alpha=1.0).loss(G(z, cond), cond, teacher, fake, draw)
    g_sid = grad_of(G, L_sid)
    assert L_sid.abs().max() > 1e-6 and g_sid.norm() > 1e-6
    torch.testing.assert_close(L_sim, 2 * L_sid, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g_sim, 2 * g_sid, rtol=1e-8, atol=1e-12)


def test_sim_gradients_reach_theta_through_x_t_into_both_networks(testbed):
    teacher, fake, G, z, cond, draw = networks(testbed, seed=3)
    dist, td = build_distance("pseudo_huber", c=1e-3), build_time_distribution("t2i")

    def sim(detach):
        return grad_of(G, SIMLoss(dist, td, "nowgt", detach_direction=detach).loss(G(z, cond), cond, teacher, fake,
                                                                                      draw))

    g_full, g_outside = sim(False), sim(True)

    def inside_only():  # the path through d'(y): x_t into the teacher and the fake network, v held fixed
        x0 = G(z, cond)
        x_t = draw.x_t(x0)
        D_q, D_psi = teacher(x_t, draw.sigma, cond), fake(x_t, draw.sigma, cond)
        return -per_sample_dot(dist.grad(D_psi - D_q), (D_psi - x0).detach())

    g_inside = grad_of(G, inside_only())
    assert g_inside.norm() > 0.01 * g_full.norm() > 0
    torch.testing.assert_close(g_full - g_outside, g_inside, rtol=1e-7, atol=1e-10)


def test_a_short_distillation_logs_table_3s_metrics(toy_files, tmp_path):
    from sim_core.testbeds.digits.classifier import save_classifier, train_classifier
    from sim_core.train.config import parse_config
    from sim_core.train.evaluate import evaluate_snapshot, latest_snapshot
    from sim_core.train.loop import distill
    model, acc = train_classifier(seed=0, epochs=2)
    save_classifier(model, str(tmp_path / "classifier.pt"), test_accuracy=acc)
    cfg = parse_config({
        "name": "t2i", "testbed": {**config(toy_files).model_dump(), "classifier": str(tmp_path / "classifier.pt")},
        "method": {"name": "sim", "time_dist": "t2i", "weighting": "nowgt"},
        "online": {"time_dist": "t2i", "weighting": "nowgt"},
        "optim": {"batch_size": 8, "lr_gen": 1e-4, "lr_online": 1e-4},
        "train": {"iterations": 3, "eval_every": 3, "snapshot_every": 3, "progress": False},
        "eval": {"num_samples": 60, "batch_size": 30}})
    tb = load_testbed(cfg.testbed)
    status = distill(cfg, tmp_path / "run", testbed=tb)
    assert status["status"] == "finished"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert len(prov["teacher_tree_sha256"]) == 64 and {"diffusers", "transformers"} <= set(prov["packages"])
    assert prov["time_distributions"]["theta"] == {"name": "t2i", "p_mean": -2.0, "p_std": 2.0, "t_min": 0.01,
                                                   "t_max": 156.6155, "truncation": "resample"}
    resolved = (tmp_path / "run" / "config.yaml").read_text()  # the named choices where the paper is silent
    for choice in ("teacher_guidance: 4.5", "caption_dropout: 0.0", "caption_rule: lowest_id", "max_tokens: 16"):
        assert choice in resolved
    last = [r for r in rows if "eval/fid" in r][-1]
    assert last["step"] == 3 and 0 <= last["eval/align_train"] <= 1 and 0 <= last["eval/align_heldout"] <= 1
    assert last["eval/fid"] > 0
    final = evaluate_snapshot(cfg, latest_snapshot(tmp_path / "run"), seeds=[5, 6], testbed=tb)  # as the DAG does
    assert {"align_train", "align_heldout", "fid", "fid_std_seeds"} <= set(final)
    teacher = tb.teacher_metrics(3, 0, cfg.eval)
    assert set(teacher) == {"align_train", "align_heldout", "fid"}


# ---- bad input: one line, before any work --------------------------------------------------------------------------
def test_a_missing_teacher_folder_is_named(toy_files, tmp_path):
    with pytest.raises(ConfigError, match=r"teacher folder .*nowhere has no transformer/config.json"):
        load_testbed(config(toy_files).model_copy(update={"teacher": str(tmp_path / "nowhere")}))


def test_a_text_encoder_of_another_width_is_refused(toy_files, tmp_path):
    build_toy_t5(tmp_path / "t5_16", d_model=16)
    with pytest.raises(ConfigError, match="gives 16-d states, the teacher's caption projection takes 32"):
        load_testbed(config(toy_files).model_copy(update={"text_encoder": str(tmp_path / "t5_16")}))


def test_a_vae_with_other_latent_channels_is_refused(toy_files, tmp_path):
    from diffusers import AutoencoderKL
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8,), layers_per_block=1,
                  norm_num_groups=8, sample_size=8).save_pretrained(tmp_path / "vae")
    with pytest.raises(ConfigError, match="has 8 latent channels, the teacher takes 4"):
        load_testbed(config(toy_files).model_copy(update={"vae": str(tmp_path / "vae")}))


def test_a_corrupt_teacher_is_refused(toy_files, tmp_path):
    shutil.copytree(toy_files / "teacher", tmp_path / "teacher")
    weights = next((tmp_path / "teacher" / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot load the PixArt transformer"):
        load_testbed(config(toy_files).model_copy(update={"teacher": str(tmp_path / "teacher")}))


def test_an_empty_prompt_file_is_refused(toy_files, tmp_path):
    from sim_core.testbeds.t2i.testbed import T2ITestbed
    (tmp_path / "empty.txt").write_text("\n \n")
    cfg = config(toy_files).model_copy(update={"kind": "t2i", "train_prompts": str(tmp_path / "empty.txt"),
                                               "train_prompts_format": "text", "eval_prompts": str(tmp_path / "x"),
                                               "eval_prompts_format": "text"})
    with pytest.raises(ConfigError, match="empty.txt"):
        T2ITestbed(cfg)


def test_activation_checkpointing_changes_memory_not_the_numbers(toy_files, tmp_path):
    from sim_core.files import load_checked
    from sim_core.train.config import parse_config
    from sim_core.train.loop import Distiller, distill
    from sim_core.train.precision import checkpointing
    tb = load_testbed(config(toy_files))
    weights = {}
    for on in (False, True):
        cfg = parse_config({"name": "ckpt", "testbed": config(toy_files).model_dump(), "perf": {"checkpointing": on},
                            "method": {"name": "sim", "time_dist": "t2i", "weighting": "nowgt"},
                            "optim": {"batch_size": 8, "lr_gen": 1e-3, "lr_online": 1e-3},
                            "train": {"iterations": 2, "progress": False}, "eval": {"num_samples": 20}})
        assert Distiller(cfg, tmp_path / "probe", tb).G.D.model.gradient_checkpointing is on
        assert distill(cfg, tmp_path / str(on), testbed=tb)["status"] == "finished"
        weights[on] = load_checked(tmp_path / str(on) / "checkpoint.pt", "checkpoint")["G"]
        tb.D_init.model.disable_gradient_checkpointing()  # the testbed's own network stays as loaded
    assert weights[True].keys() == weights[False].keys()
    assert all(torch.equal(weights[True][k], weights[False][k]) for k in weights[True])  # recomputed, same numbers
    assert any(not torch.equal(weights[True][f"D.{k}"], v) for k, v in tb.D_init.state_dict().items())  # it moved
    with pytest.raises(ConfigError, match="perf.checkpointing: the Linear network has no part that supports it"):
        checkpointing(torch.nn.Linear(2, 2), cfg.perf)


@pytest.mark.parametrize("change, match", [
    ({"teacher": "nowhere"}, "teacher folder nowhere has no transformer/config.json"),
    ({"teacher_guidance": -1}, "testbed.teacher_guidance"),
    ({"caption_dropout": 1.0}, "testbed.caption_dropout"),
    ({"guidance": 2.0}, "testbed t2i_digits does not take guidance"),
    ({"text_encoder_dtype": "float16"}, "testbed.text_encoder_dtype"),
], ids=["missing teacher", "negative guidance", "dropout 1", "unknown key", "encoder dtype"])
def test_sim_distill_refuses_a_bad_t2i_config_in_one_line_before_any_work(toy_files, tmp_path, capsys, change, match):
    import yaml

    from sim_core.cli import main
    from sim_core.errors import EXIT_BAD_INPUT
    section = {"kind": "t2i_digits", "teacher": str(toy_files / "teacher"), "text_encoder": str(toy_files / "t5"),
               **change}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"name": "bad", "testbed": section, "train": {"iterations": 2}}))
    with pytest.raises(SystemExit) as e:
        main(["distill", "--config", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == EXIT_BAD_INPUT and len(err) == 1 and match in err[0], err
    assert not (tmp_path / "run").exists()


def test_teacher_rows_run_with_the_text_encoder_in_bfloat16(toy_files, testbed):
    """The paper's settings keep T5 in bfloat16 (on the GPU): the teacher rows move its states to the teacher's
    dtype and device (a float32 network given bfloat16 states fails); the samples stay float32 on the CPU and close
    to those of a float32 encoder."""
    tb16 = load_testbed(config(toy_files, text_encoder_dtype="bfloat16"))
    assert tb16.eval_table.states.dtype == torch.bfloat16
    z16, which16 = tb16.teacher_latents(3, 20, 0, 10, device="cpu")
    z32, which32 = testbed.teacher_latents(3, 20, 0, 10)
    assert z16.dtype == torch.float32 and z16.device.type == "cpu" and torch.equal(which16, which32)
    rel = ((z16 - z32).norm() / z32.norm()).item()
    print(f"bfloat16 vs float32 text states: relative difference of the teacher's samples {rel:.2e}")
    assert 0 < rel < 5e-3  # measured 6.4e-4: bfloat16 keeps ~3 significant digits of the states
    from sim_core.train.config import EvalConfig
    small = EvalConfig(num_samples=20, batch_size=10)
    assert set(tb16.teacher_metrics(3, 0, small)) == set(testbed.teacher_metrics(3, 0, small))
