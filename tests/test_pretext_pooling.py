"""Issue 13's parts: HMTL pretext tasks (jigsaw, in-painting) and APViT pooling (APP, ATP)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fercure.train import pooling, pretext
from fercure.train.config import TrainConfig
from fercure.train.loop import fit, forward_with_aux
from fercure.train.model import FerNet, build_model
from fercure.train.parts import build_parts, part_names
from fercure.workspace import WorkspaceError


# --- jigsaw ---------------------------------------------------------------------------------

def test_permutation_set_is_distinct_far_apart_and_deterministic():
    p = pretext.permutation_set(3, 30, seed=0)
    assert p.shape == (30, 9)
    assert torch.equal(p[0], torch.arange(9))  # identity first
    assert len({tuple(r.tolist()) for r in p}) == 30
    assert all(sorted(r.tolist()) == list(range(9)) for r in p)  # each row a permutation
    d = (p.unsqueeze(0) != p.unsqueeze(1)).sum(-1) + torch.eye(30, dtype=torch.long) * 99
    assert int(d.min()) >= 6  # maximal-Hamming choice: a random set of 30 gets pairs at distance 2-3
    assert torch.equal(p, pretext.permutation_set(3, 30, seed=0))
    with pytest.raises(ValueError):
        pretext.permutation_set(2, 25)  # only 4! = 24 exist


def test_jigsaw_label_names_the_permutation_applied():
    grid, t = 3, 4
    # tile k of every image is filled with the value k, so the output reads off the order directly
    tiles = torch.arange(grid * grid, dtype=torch.float32).view(grid, grid)
    x = tiles.repeat_interleave(t, 0).repeat_interleave(t, 1).expand(5, 2, grid * t, grid * t).clone()
    perms = pretext.permutation_set(grid, 10, seed=1)
    which = torch.tensor([0, 3, 7, 9, 3])
    out = pretext.shuffle_tiles(x, perms, which, grid)
    for b in range(5):
        seen = out[b, 0, ::t, ::t].flatten()  # one pixel per tile, row-major grid positions
        assert torch.equal(seen.long(), perms[which[b]])
        assert torch.equal(out[b, 0], out[b, 1])  # channels move together
    assert torch.equal(out[0], x[0])  # permutation 0 is the identity


def test_jigsaw_keeps_the_border_a_grid_does_not_cover():
    x = torch.randn(2, 3, 14, 14)
    out = pretext.shuffle_tiles(x, pretext.permutation_set(3, 5), torch.tensor([1, 2]), 3)
    assert torch.equal(out[:, :, 12:, :], x[:, :, 12:, :]) and torch.equal(out[:, :, :, 12:], x[:, :, :, 12:])
    assert not torch.equal(out, x)


# --- in-painting --------------------------------------------------------------------------------

def test_masked_mse_is_zero_for_a_perfect_reconstruction_of_the_masked_region():
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(4, 3, 16, 16)
    mask = pretext.random_square_mask(4, 16, (0.25, 0.5), gen, torch.device("cpu"))
    recon = torch.where(mask.bool(), target, torch.randn_like(target))  # right inside, wrong outside
    assert float(pretext.masked_mse(recon, target, mask)) == 0.0
    wrong = torch.where(mask.bool(), target + 2.0, target)
    assert float(pretext.masked_mse(wrong, target, mask)) == pytest.approx(4.0)


def test_random_square_mask_is_one_square_per_image_of_the_drawn_size():
    gen = torch.Generator().manual_seed(3)
    m = pretext.random_square_mask(50, 40, (0.25, 0.5), gen, torch.device("cpu"))
    area = m.sum(dim=(1, 2, 3)) / (40 * 40)
    assert float(area.min()) >= 0.25 ** 2 * 0.8 and float(area.max()) <= 0.5 ** 2 * 1.2
    rows, cols = m[:, 0].amax(dim=2).sum(1), m[:, 0].amax(dim=1).sum(1)
    assert torch.equal(rows * cols, m.sum(dim=(1, 2, 3)))  # a filled rectangle, no holes
    assert float((rows - cols).abs().max()) <= 1  # square up to rounding


# --- APP / ATP ----------------------------------------------------------------------------------

def test_app_keeps_exactly_k_positions_and_is_average_pooling_with_all():
    feat = torch.rand(3, 8, 4, 4)
    assert torch.allclose(pooling.attentive_patch_pool(feat, 16), feat.mean(dim=(2, 3)))
    feat = torch.zeros(1, 2, 2, 2)
    feat[0, :, 0, 0] = torch.tensor([4.0, 4.0])  # the strongest position
    feat[0, :, 1, 1] = torch.tensor([1.0, 3.0])
    feat[0, :, 0, 1] = torch.tensor([0.5, 0.0])
    assert torch.equal(pooling.attentive_patch_pool(feat, 1), torch.tensor([[4.0, 4.0]]))
    assert torch.equal(pooling.attentive_patch_pool(feat, 2), torch.tensor([[2.5, 3.5]]))
    assert pooling.keep_count(16, 0.5) == 8 and pooling.keep_count(4, 0.01) == 1


def test_atp_keeps_exactly_k_tokens_in_order_and_all_is_the_identity():
    x = torch.arange(2 * 6 * 3, dtype=torch.float32).view(2, 6, 3)
    score = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2], [5.0, 1.0, 2.0, 3.0, 4.0]])
    kept = pooling.keep_top_tokens(x, score, 2, n_prefix=1)
    assert kept.shape == (2, 3, 3)
    assert torch.equal(kept[0], x[0, [0, 2, 4]])  # prefix + patches 1 and 3, in order
    assert torch.equal(kept[1], x[1, [0, 1, 5]])
    assert pooling.keep_top_tokens(x, score, 5, n_prefix=1) is x


def test_vit_with_atp_over_all_tokens_equals_the_plain_vit():
    torch.manual_seed(0)
    net = FerNet("vit_tiny_patch16_224", 7, pool="atp", pool_keep=1.0, image_size=32,
                 backbone_args={"patch_size": 8, "depth": 2}).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        plain = net.backbone(x)  # timm's own forward (forward_features + head pooling)
        assert torch.allclose(net(x)["embedding"], plain, atol=1e-6)
        net.pool_keep = 0.5
        pruned = net(x)["embedding"]
    assert not torch.allclose(pruned, plain, atol=1e-4)
    # class attention over the 16 patch tokens is a distribution per image
    vit = net.backbone
    with torch.no_grad():
        tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        att = pooling.class_attention(vit.blocks[1], tokens, vit.num_prefix_tokens)
    assert att.shape == (3, 16) and float(att.sum(1).max()) <= 1.0 + 1e-5


def test_vit_is_built_at_the_crop_size_and_cnn_pool_avg_matches_timm():
    net = FerNet("vit_tiny_patch16_224", 7, image_size=48)
    assert net.backbone.patch_embed.img_size == (48, 48)
    torch.manual_seed(0)
    cnn = FerNet("resnet18", 7, image_size=48).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(cnn(x)["embedding"], cnn.backbone(x))


def test_pool_and_part_misuse_is_a_clear_error():
    with pytest.raises(WorkspaceError, match="not a timm VisionTransformer"):
        FerNet("resnet18", 7, pool="atp")
    with pytest.raises(WorkspaceError, match="is a ViT"):
        FerNet("vit_tiny_patch16_224", 7, pool="app", image_size=32)
    with pytest.raises(WorkspaceError, match="CNN feature map"):
        build_model(TrainConfig(backbone="vit_tiny_patch16_224", image_size=32, inpaint=True,
                                backbone_args={"patch_size": 8, "depth": 1}), 7,
                    build_parts(TrainConfig(inpaint=True, image_size=32), 4, 7, torch.device("cpu")))
    with pytest.raises(ValueError, match="pool_keep"):
        TrainConfig(pool="app", pool_keep=0.0)


# --- the parts in the loop ----------------------------------------------------------------------

def test_pretext_rows_are_split_off_and_never_reach_the_batch_outputs():
    config = TrainConfig(image_size=32, jigsaw=True, inpaint=True, aux_share=0.25, device="cpu")
    parts = build_parts(config, 8, 7, torch.device("cpu"))
    assert part_names(config) == ["jigsaw", "inpaint"]
    model = build_model(config, 7, parts)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    out, aux = forward_with_aux(model, x, parts, gen)
    assert out["logits"].shape == (8, 7)
    assert [(p.name, a["logits"].shape[0]) for p, a in aux] == [("jigsaw", 2), ("inpaint", 2)]
    assert "jigsaw" not in out and "feature_map" in aux[1][1]  # on-demand heads are not run on every row
    model.eval()
    with torch.no_grad():  # the batch's rows are the batch alone (eval: no batch-norm coupling)
        alone = model(x)["logits"]
        together, _ = forward_with_aux(model, x, parts, gen)
    assert torch.allclose(together["logits"], alone, atol=1e-5)
    loss = sum(p.aux_loss(a, None) for p, a in aux)
    assert torch.isfinite(loss) and float(loss.detach()) > 0


@pytest.mark.parametrize("switch", [dict(jigsaw=True), dict(inpaint=True), dict(pool="app")])
def test_fit_with_each_part_records_the_same_tables_and_learns_its_task(switch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (48, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 48)
    config = TrainConfig(image_size=32, epochs=2, batch_size=16, device="cpu", **switch)
    res = fit(images, labels, ["a", "b", "c"], config)
    assert res.dynamics["p_given"].shape == (2, 48)  # pretext rows add no samples
    assert res.mean_probs.shape == (48, 3) and np.allclose(res.mean_probs.sum(1), 1, atol=1e-5)
    # each sample's recorded p(label) is its own row's probability, every epoch: a pretext row
    # that leaked into the statistics would shift them
    assert np.allclose(res.dynamics["p_given"].mean(0), res.mean_probs[np.arange(48), labels], atol=1e-5)
    if "jigsaw" in switch or "inpaint" in switch:
        plain = fit(images, labels, ["a", "b", "c"], TrainConfig(image_size=32, epochs=2, batch_size=16, device="cpu"))
        assert res.history[0]["loss"] > plain.history[0]["loss"]  # the pretext loss is in the objective


def test_train_command_switches_the_parts_on_and_records_them(tmp_path):
    import json

    from typer.testing import CliRunner

    from fercure.cli import app
    from test_train_stage import make_workspace

    ws = make_workspace(tmp_path / "ws")
    result = CliRunner().invoke(app, ["train", "-w", str(ws.root), "--backbone", "test_resnet", "--image-size", "24",
                                      "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-retrain",
                                      "--knn", "0", "--jigsaw", "--inpaint", "--pool", "app", "--pool-keep", "0.25"])
    assert result.exit_code == 0, result.output
    conf = json.loads((ws.run_dir(ws.latest_run()) / "config.json").read_text())
    assert conf["parts"] == ["jigsaw", "inpaint", "app"]
    assert conf["jigsaw"] and conf["inpaint"] and conf["pool"] == "app" and conf["pool_keep"] == 0.25
    bad = CliRunner().invoke(app, ["train", "-w", str(ws.root), "--backbone", "test_resnet", "--device", "cpu",
                                   "--backbone-arg", "patch_size"])
    assert bad.exit_code != 0 and "KEY=VALUE" in bad.output
