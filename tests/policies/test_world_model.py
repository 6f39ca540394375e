"""World model: shapes in every mode, determinism, checkpoints (round trip and refusal), pluggable parts."""
from __future__ import annotations

import pytest
import torch

from policies.errors import CheckpointError, PolicyError
from policies.world_model import WorldModel, WorldModelConfig
from policies.world_model.checkpoint import MANIFEST, WEIGHTS

torch.set_num_threads(1)
S = 16  # image side in these tests


def tiny_cfg(**kw) -> WorldModelConfig:
    base = {"image_size": S, "num_frames": 3, "patch_size": (1, 4, 4), "num_layers": 1, "ffn_dim": 64,
            "text_layers": 1, "text_vocab_size": 256, "max_text_tokens": 12, "success_hidden": 16}
    return WorldModelConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def model() -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(tiny_cfg()).eval()


def batch(b: int = 2, t: int = 3, actions: bool = True, success=(1.0, float("nan"))) -> dict:
    g = torch.Generator().manual_seed(3)
    return {
        "video": torch.rand(b, t, 3, S, S, generator=g),
        "caption": ["pick the red cube"] * b,
        "actions": torch.randn(b, t - 1, 16, generator=g) if actions else None,
        "success": torch.tensor(success[:b]),
    }


def logged_losses(m: WorldModel, b: dict, key: str, params, steps: int, lr: float) -> list[float]:
    """`steps` Adam steps of `params` on batch `b`; the logged loss `key` of each."""
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss, logs = m(b)
        losses.append(logs[key])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses


def test_forward_loss_and_logs(model):
    loss, logs = model(batch())
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert {"loss", "loss_fm", "loss_success"} <= set(logs)
    loss.backward()
    assert model.transformer.proj_out.weight.grad is not None
    _, logs = model(batch(actions=False, success=(float("nan"), float("nan"))))
    assert "loss_success" not in logs  # unlabelled clips do not train the success head


def test_imagine_shapes_and_start_frame_kept(model):
    frame = torch.rand(3, S, S)
    videos = model.imagine(frame, "pick the red cube", n=3, steps=2, guidance=1.0, seed=0)
    assert videos.shape == (3, 3, 3, S, S)
    assert 0.0 <= videos.min() and videos.max() <= 1.0
    assert torch.allclose(videos[:, 0], frame.expand(3, -1, -1, -1), atol=1e-5)
    two = model.imagine(torch.rand(2, 3, S, S), "push", n=2, steps=2, seed=0, num_frames=5)
    assert two.shape == (2, 5, 3, S, S)


def test_guidance_path_runs_and_changes_the_video(model):
    frame = torch.rand(3, S, S)
    plain = model.imagine(frame, "open the drawer", n=2, steps=3, guidance=1.0, seed=1)
    guided = model.imagine(frame, "open the drawer", n=2, steps=3, guidance=4.0, seed=1)
    assert torch.isfinite(guided).all()
    assert not torch.allclose(plain, guided)


def test_predict_shapes_and_probability(model):
    video, p = model.predict(torch.rand(3, S, S), torch.randn(4, 16), "place the cube", seed=0, steps=2)
    assert video.shape == (5, 3, S, S)
    assert 0.0 <= p <= 1.0
    assert model.success_probs(torch.rand(4, 3, 3, S, S), "x").shape == (4,)
    assert 0.0 <= model.success_prob(torch.rand(3, S, S), "x") <= 1.0


def test_predict_takes_the_configured_steps_when_given_none():
    torch.manual_seed(0)
    m = WorldModel(tiny_cfg(predict_steps=3)).eval()
    frame, acts = torch.rand(3, S, S), torch.randn(2, 16)
    default = m.predict(frame, acts, "pick", seed=4)[0]
    assert torch.equal(default, m.predict(frame, acts, "pick", seed=4, steps=3)[0])
    assert not torch.equal(default, m.predict(frame, acts, "pick", seed=4, steps=1)[0])
    assert torch.equal(m.predict_many(frame, acts[None], "pick", seed=4)[0], default)
    with pytest.raises(ValueError, match="world_model.predict_steps"):
        tiny_cfg(predict_steps=0)


def test_same_seed_same_video(model):
    frame = torch.rand(3, S, S)
    a = model.imagine(frame, "pick", n=2, steps=3, guidance=2.0, seed=7)
    b = model.imagine(frame, "pick", n=2, steps=3, guidance=2.0, seed=7)
    c = model.imagine(frame, "pick", n=2, steps=3, guidance=2.0, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # the n candidates differ


def test_save_load_identical_outputs(model, tmp_path):
    sha = model.save_pretrained(tmp_path / "wm")
    assert len(sha) == 64
    loaded = WorldModel.from_pretrained(tmp_path / "wm")
    frame = torch.rand(3, S, S)
    assert torch.equal(model.imagine(frame, "pick", n=2, steps=2, seed=0), loaded.imagine(frame, "pick", n=2, steps=2, seed=0))
    acts = torch.randn(2, 16)
    assert model.predict(frame, acts, "pick", steps=2)[1] == loaded.predict(frame, acts, "pick", steps=2)[1]


def test_corrupted_checkpoint_is_refused(model, tmp_path):
    d = tmp_path / "wm"
    model.save_pretrained(d)
    data = bytearray((d / WEIGHTS).read_bytes())
    data[-10] ^= 0xFF  # same size, different content
    (d / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        WorldModel.from_pretrained(d)
    (d / WEIGHTS).write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="truncated"):
        WorldModel.from_pretrained(d)
    (d / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="manifest"):
        WorldModel.from_pretrained(d)
    with pytest.raises(CheckpointError, match="does not exist"):
        WorldModel.from_pretrained(tmp_path / "nowhere")


def test_bad_inputs_raise_policy_error(model):
    with pytest.raises(PolicyError, match="frames must be"):
        model.imagine(torch.rand(3, S + 1, S), "pick", n=1, steps=1)
    with pytest.raises(PolicyError, match="actions must be"):
        model.predict(torch.rand(3, S, S), torch.randn(4, 7), "pick", steps=1)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="world_model.vae"):
        WorldModelConfig(vae="vqgan")
    with pytest.raises(ValueError, match="world_model.image_size"):
        WorldModelConfig(image_size=60)


def test_kl2d_vae_path_and_its_own_loss():
    torch.manual_seed(0)
    m = WorldModel(tiny_cfg(vae="kl2d", kl_block_out_channels=(8, 8), patch_size=(1, 2, 2)))
    assert m.vae.latent_channels == 4
    loss, _ = m(batch())
    assert torch.isfinite(loss)
    assert not any(p.requires_grad for p in m.vae.parameters())  # frozen inside the world model
    m.vae.ae.requires_grad_(True)
    vae_loss, logs = m.vae.loss(torch.rand(2, 2, 3, S, S))
    vae_loss.backward()
    assert logs["vae_rec"] > 0
    assert m.eval().imagine(torch.rand(3, S, S), "pick", n=2, steps=2).shape == (2, 3, 3, S, S)


def test_pretrained_transformer_is_widened_not_reinitialised(tmp_path):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    base = WanTransformer3DModel(patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=32, in_channels=3,
                                 out_channels=3, text_dim=64, freq_dim=64, ffn_dim=64, num_layers=1)
    base.save_pretrained(tmp_path / "wan" / "transformer")
    m = WorldModel(tiny_cfg(size="full", pretrained_path=str(tmp_path / "wan")))
    w = m.transformer.patch_embedding.conv.weight
    assert w.shape[1] == 7  # noisy (3) + start frame (3) + mask (1)
    assert torch.equal(w[:, :3], base.patch_embedding.weight)
    assert torch.count_nonzero(w[:, 3:]) == 0
    assert torch.equal(m.transformer.blocks[0].ffn.net[2].weight, base.blocks[0].ffn.net[2].weight)
    with pytest.raises(PolicyError, match="not a local directory"):
        WorldModel(tiny_cfg(pretrained_path="Wan-AI/Wan2.1-I2V-14B"))


def test_pretrained_text_encoder_from_local_dir(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "pick", "the", "red", "cube", "place"]
    (tmp_path / "vocab.txt").write_text("\n".join(words))
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    enc_dir = tmp_path / "bert"
    tok.save_pretrained(enc_dir)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(enc_dir)
    m = WorldModel(tiny_cfg(text_encoder="pretrained", text_encoder_path=str(enc_dir)))
    assert not any(p.requires_grad for p in m.text_encoder.parameters())
    loss, _ = m(batch())
    assert torch.isfinite(loss)
    m.save_pretrained(tmp_path / "wm")
    loaded = WorldModel.from_pretrained(tmp_path / "wm")
    frame = torch.rand(3, S, S)
    assert torch.equal(m.eval().imagine(frame, "pick the red cube", n=1, steps=2),
                       loaded.imagine(frame, "pick the red cube", n=1, steps=2))
    with pytest.raises(PolicyError, match="text_dim"):
        WorldModel(tiny_cfg(text_encoder="pretrained", text_encoder_path=str(enc_dir), text_dim=32))


def test_plain_latent_mode_trains_and_keeps_the_start_frame():
    torch.manual_seed(0)
    m = WorldModel(tiny_cfg(residual=False))
    loss, _ = m(batch())
    assert torch.isfinite(loss)
    frame = torch.rand(3, S, S)
    videos = m.eval().imagine(frame, "pick", n=2, steps=2, seed=0)
    assert torch.allclose(videos[:, 0], frame.expand(2, -1, -1, -1), atol=1e-5)


def test_position_embedding_and_action_mlp_round_trip(tmp_path):
    torch.manual_seed(0)
    m = WorldModel(tiny_cfg(pos_embed=True, action_hidden=32)).eval()
    pe = m.transformer.patch_embedding
    assert pe.pos.shape == (m.transformer.config.num_attention_heads * 32, 1, S // 4, S // 4)
    assert pe.pos.std() > 0  # from scratch: random, so tokens differ by position from step 0
    assert torch.count_nonzero(pe.action[-1].weight) == 0  # actions start with no effect
    m.save_pretrained(tmp_path / "wm")
    loaded = WorldModel.from_pretrained(tmp_path / "wm")
    assert torch.equal(loaded.transformer.patch_embedding.pos, pe.pos)
    frame, acts = torch.rand(3, S, S), torch.randn(2, 16)
    assert torch.equal(m.predict(frame, acts, "pick", steps=2)[0], loaded.predict(frame, acts, "pick", steps=2)[0])
    # a checkpoint of the default config (no position embedding) is not mistaken for this one
    assert not hasattr(WorldModel(tiny_cfg()).transformer.patch_embedding.pos, "shape")


def test_action_map_gives_every_token_its_own_reading_of_the_actions(tmp_path):
    torch.manual_seed(0)
    m = WorldModel(tiny_cfg(pos_embed=True, action_hidden=32, action_layers=2, action_map=True)).eval()
    pe = m.transformer.patch_embedding
    grid = (S // 4) ** 2
    assert len([x for x in pe.action if isinstance(x, torch.nn.Linear)]) == 3  # two hidden layers
    assert pe.action_map.shape == (grid, m.transformer.config.num_attention_heads * 32, 32)
    assert torch.count_nonzero(pe.action_map) == 0  # starts with no effect, like the shared embedding
    with torch.no_grad():
        pe.action_map.normal_(std=0.5)
        pe.action[-1].weight.normal_(std=0.5)
    x = torch.zeros(1, pe.conv.in_channels, 2, S, S)

    def embed(actions: torch.Tensor) -> torch.Tensor:
        pe.frame_actions = torch.cat([actions, torch.ones(1, 2, 1)], -1)  # (B, t, A + flag)
        try:
            return pe(x)  # (1, D, t, h, w)
        finally:
            pe.frame_actions = None

    g = torch.Generator().manual_seed(1)
    change = embed(torch.randn(1, 2, 16, generator=g)) - embed(torch.randn(1, 2, 16, generator=g))
    per_token = change.flatten(3)  # (1, D, t, tokens): how each token's input moved with the actions
    assert (per_token - per_token.mean(-1, keepdim=True)).abs().amax() > 1e-2  # not the same on every token
    m.save_pretrained(tmp_path / "wm")
    loaded = WorldModel.from_pretrained(tmp_path / "wm")
    frame, acts = torch.rand(3, S, S), torch.randn(2, 16)
    assert torch.equal(m.predict(frame, acts, "pick", steps=2)[0], loaded.predict(frame, acts, "pick", steps=2)[0])
    with pytest.raises(ValueError, match="action_map"):
        tiny_cfg(action_map=True, action_hidden=32)  # no position embedding: nothing to say where a token is


def test_action_mlp_depth_is_checked():
    with pytest.raises(ValueError, match="action_layers"):
        tiny_cfg(action_hidden=32, action_layers=0)


def test_action_stats_standardise_the_chunk_and_survive_a_round_trip(tmp_path):
    torch.manual_seed(0)
    m = WorldModel(tiny_cfg(normalize_actions=True)).eval()
    acts = torch.randn(100, 16) * torch.linspace(0.01, 1.0, 16) + 2.0
    m.fit_action_stats(acts)
    assert torch.allclose(m.action_mean, acts.mean(0)) and torch.allclose(m.action_std, acts.std(0))
    m.save_pretrained(tmp_path / "wm")
    assert torch.equal(WorldModel.from_pretrained(tmp_path / "wm").action_std, m.action_std)
    with pytest.raises(PolicyError, match="finite"):
        m.fit_action_stats(torch.full((4, 16), float("nan")))
    WorldModel(tiny_cfg()).fit_action_stats(acts)  # without normalize_actions: nothing to fit, no error


@pytest.mark.parametrize("from_success", [False, True])
def test_imagine_from_success_keeps_the_actions_of_failed_episodes(monkeypatch, from_success):
    """With `imagine_from_success`, a clip's actions are dropped (imagine mode) only when its episode
    succeeded: a failed episode's clip always trains evaluation mode."""
    torch.manual_seed(0)
    m = WorldModel(tiny_cfg(action_dropout=1.0, imagine_from_success=from_success))
    seen = []
    orig = m._cond_channels

    def spy(cond, n_cond, actions, present, goal=None):
        seen.append(present.clone())
        return orig(cond, n_cond, actions, present, goal)

    monkeypatch.setattr(m, "_cond_channels", spy)
    m(batch() | {"episode_success": torch.tensor([True, False])})
    assert seen[0].tolist() == ([False, True] if from_success else [False, False])
    m(batch())  # no episode outcome in the batch: the plain dropout
    assert seen[1].tolist() == [False, False]


def test_imagine_action_head_learns_the_actions_of_imagine_mode_clips(tmp_path):
    """`imagine_action_loss`: on imagine-mode clips a head reads the dropped actions off a block's tokens, and
    a few steps of it move its prediction towards them; evaluation-mode clips add no such loss; the head
    survives a checkpoint round trip; a block that does not exist is refused."""
    torch.manual_seed(0)
    m = WorldModel(tiny_cfg(num_layers=2, action_dropout=1.0, imagine_action_loss=1.0, imagine_action_block=0))
    with pytest.raises(PolicyError, match="start_pose"):
        m(batch())
    b = batch() | {"start_pose": torch.randn(2, 16)}
    losses = logged_losses(m, b, "loss_imagine_action", m.action_head.parameters(), steps=30, lr=0.05)
    assert losses[-1] < 0.5 * losses[0]
    m.cfg.action_dropout = 0.0  # every clip keeps its actions: nothing for the head to say
    assert "loss_imagine_action" not in m(b)[1]
    m.save_pretrained(tmp_path / "wm")
    back = WorldModel.from_pretrained(tmp_path / "wm")
    assert torch.equal(back.action_head.weight, m.action_head.weight)
    back.imagine(torch.rand(1, 3, S, S), "pick the red cube", n=2, steps=2)  # sampling never needs the head
    assert back._tapped is None
    with pytest.raises(ValueError, match="imagine_action_block"):
        tiny_cfg(num_layers=2, imagine_action_loss=1.0, imagine_action_block=2)
    with pytest.raises(ValueError, match="imagine_action_loss"):
        tiny_cfg(imagine_action_loss=-1.0)


def test_plan_reads_the_action_head_then_draws_under_that_plan():
    """`imagine(plan=True)`: the futures are the evaluation-mode prediction under the action head's plan, which
    starts from the given joint positions."""
    torch.manual_seed(0)
    m = WorldModel(tiny_cfg(num_layers=2, imagine_action_loss=1.0, normalize_actions=True)).eval()
    m.fit_action_stats(torch.randn(50, 16) * 0.3 + 1.0)
    frame = torch.rand(3, S, S)
    pose = torch.randn(16)
    plan = m.plan_actions(frame, "pick the red cube", pose, n=3, seed=5)
    assert plan.shape == (3, 2, 16) and torch.isfinite(plan).all()
    assert not torch.allclose(plan[0], plan[1])  # each candidate's own starting noise
    assert torch.equal(plan, m.plan_actions(frame, "pick the red cube", pose, n=3, seed=5))
    assert torch.allclose(m.plan_actions(frame, "pick the red cube", pose + 1.0, n=3, seed=5), plan + 1.0)
    videos = m.imagine(frame, "pick the red cube", n=3, steps=2, seed=5, plan=True, pose=pose)
    assert torch.allclose(videos, m.predict_many(frame, plan, "pick the red cube", seed=5, steps=2, guidance=2.0))
    assert m._tapped is None and not m.training
    with pytest.raises(PolicyError, match="needs pose"):
        m.imagine(frame, "pick the red cube", n=3, steps=2, plan=True)
    with pytest.raises(PolicyError, match="finite"):
        m.plan_actions(frame, "pick the red cube", torch.full((16,), float("nan")))
    with pytest.raises(PolicyError, match="no action head"):
        WorldModel(tiny_cfg()).eval().plan_actions(frame, "pick the red cube", pose)


def test_imagine_joints_trains_the_joint_channels_and_imagines_them_from_the_measured_pose(tmp_path):
    """`imagine_joints`: the joint positions are latent channels after the video's. Training needs every frame's
    joints and fits them (a few steps lower their loss); sampling needs the measured ones, which come back
    exactly as frame 0's; the stats survive a checkpoint; evaluation mode takes the pose too."""
    torch.manual_seed(0)
    m = WorldModel(tiny_cfg(num_layers=2, imagine_joints=True, joint_loss_weight=1.0, normalize_actions=True,
                            prediction="sample"))
    assert m.transformer.config.out_channels == 3 + 16 and m.success_head.conv[0].in_channels == 3
    poses = torch.cumsum(torch.randn(2, 3, 16) * 0.1, dim=1) + 0.5
    m.fit_joint_stats(poses.reshape(-1, 16))
    with pytest.raises(PolicyError, match="poses"):
        m(batch())
    with pytest.raises(PolicyError, match="poses must be"):
        m(batch() | {"poses": poses[:, :2]})
    b = batch() | {"poses": poses}
    losses = logged_losses(m, b, "loss_joints", m.parameters(), steps=25, lr=0.01)
    assert losses[-1] < 0.5 * losses[0]
    m.eval()
    frame, pose = torch.rand(3, S, S), poses[0, 0]
    videos, joints = m.imagine_joints(frame, "pick the red cube", n=3, steps=2, seed=1, pose=pose)
    assert videos.shape == (3, 3, 3, S, S) and joints.shape == (3, 3, 16)
    assert torch.allclose(joints[:, 0], pose.expand(3, -1), atol=1e-5)  # frame 0's joints: the measured ones
    assert torch.isfinite(joints).all()
    assert torch.equal(videos, m.imagine(frame, "pick the red cube", n=3, steps=2, seed=1, pose=pose))
    with pytest.raises(PolicyError, match="needs pose"):
        m.imagine(frame, "pick the red cube", n=2, steps=2)
    with pytest.raises(PolicyError, match="finite"):
        m.imagine(frame, "pick the red cube", n=2, steps=2, pose=torch.full((16,), float("nan")))
    pred, _ = m.predict(frame, torch.randn(2, 16), "pick the red cube", steps=2, pose=pose)
    assert pred.shape == (3, 3, S, S)
    with pytest.raises(PolicyError, match="needs pose"):
        m.predict(frame, torch.randn(2, 16), "pick the red cube", steps=2)
    m.save_pretrained(tmp_path / "wm")
    back = WorldModel.from_pretrained(tmp_path / "wm")
    assert torch.equal(back.joint_std, m.joint_std) and not torch.equal(back.joint_std, torch.ones(16))
    assert torch.allclose(back.imagine_joints(frame, "pick the red cube", n=3, steps=2, seed=1, pose=pose)[1], joints)
    plain = WorldModel(tiny_cfg()).eval()
    assert plain.imagine_joints(frame, "pick the red cube", n=2, steps=2)[1] is None
    with pytest.raises(ValueError, match="cond_frames"):
        tiny_cfg(imagine_joints=True, cond_frames=2, num_frames=4)


@pytest.mark.parametrize("mode", ["frame", "pixel"])
def test_joint_noise_frame_hides_each_joint_behind_one_draw(mode):
    """With `joint_noise=frame` (the default) the noisy joint channels the transformer reads in training, and the
    sample between sampling steps, are constant over each frame, as the joints are: averaging a plane's h*w
    positions cannot read the clean joint through the noise. With `pixel` (sessions 17-19) they vary."""
    torch.manual_seed(0)
    m = WorldModel(tiny_cfg(imagine_joints=True, joint_loss_weight=1.0, joint_noise=mode))
    seen = []
    denoise = m._denoise
    m._denoise = lambda x, *a: (seen.append(x[:, 3:3 + 16].detach().clone()), denoise(x, *a))[1]
    m(batch() | {"poses": torch.randn(2, 3, 16) * 0.1})
    m.eval()
    m.imagine_joints(torch.rand(3, S, S), "pick the red cube", n=2, steps=3, seed=0, pose=torch.zeros(16))
    assert len(seen) == 4  # one training call, three sampling steps
    for x in seen:
        spread = x.std(dim=(-2, -1)).max().item()  # over each plane
        assert (spread < 1e-5) if mode == "frame" else (spread > 0.1)
        assert x[:, :, 1:].std().item() > 0.1  # the draws differ between joints and frames
    with pytest.raises(ValueError, match="joint_noise"):
        tiny_cfg(imagine_joints=True, joint_noise="patch")


@pytest.mark.parametrize("pool", ["mean", "attention"])
def test_caption_adaln_adds_the_pooled_caption_to_the_timestep_embedding(tmp_path, pool):
    """`caption_adaln`: an MLP of the pooled caption joins the timestep embedding. It starts at zero (the model
    starts as one without it), learns from a batch whose caption alone says what happens, then moves the
    output by itself (same cross-attention states, another pooled caption); it survives a checkpoint. With
    `caption_pool=attention` the pooling query starts at zero (the masked mean) and learns."""
    from policies.world_model.modeling_world_model import TimeEmbeddingWithCaption, pool_caption

    torch.manual_seed(0)
    with pytest.raises(ValueError, match="caption_pool must be mean or attention"):
        tiny_cfg(caption_adaln=True, caption_pool="max")
    m = WorldModel(tiny_cfg(caption_adaln=True, caption_pool=pool, prediction="sample"))
    te = m.transformer.condition_embedder.time_embedder
    assert isinstance(te, TimeEmbeddingWithCaption) and torch.count_nonzero(te.caption[-1].weight) == 0
    hidden0, _ = m._text(["move it to the left", "move it"])
    assert torch.allclose(te.pool(hidden0), pool_caption(hidden0), atol=1e-6)  # both start as the mean
    b = batch(actions=False, success=(float("nan"),) * 2)
    b["video"][1, 0] = b["video"][0, 0]  # one start frame; the caption alone tells the two futures apart
    b["video"][0, 1:], b["video"][1, 1:] = 0.1, 0.9
    b["caption"] = ["move it to the left", "move it to the right"]
    losses = logged_losses(m, b, "loss_fm", m.parameters(), steps=30, lr=0.01)
    assert losses[-1] < 0.5 * losses[0] and torch.count_nonzero(te.caption[-1].weight) > 0
    if pool == "attention":
        assert torch.count_nonzero(te.query) > 0
    m.eval()
    hidden, _ = m._text(b["caption"])
    x = torch.randn(1, 2 * 3 + 1, 3, S, S)
    fa = torch.zeros(1, 3, m.action_channels)
    with torch.no_grad():
        assert torch.count_nonzero(te.pool(torch.zeros(1, 4, hidden.shape[-1]))) == 0  # no tokens: 0, not NaN
        outs = []
        for i in range(2):  # the same cross-attention states (caption 0), caption i in the adaptive norm
            te.states = hidden[i: i + 1]
            m.transformer.patch_embedding.frame_actions = fa
            outs.append(m.transformer(x, torch.tensor([500.0]), hidden[:1], return_dict=False)[0])
    te.states = m.transformer.patch_embedding.frame_actions = None
    assert (outs[0] - outs[1]).abs().max() > 1e-3
    frame = b["video"][0, 0]
    m.transformer.patch_embedding.frame_actions = fa
    with pytest.raises(PolicyError, match="caption of each"):
        m.transformer(x, torch.tensor([500.0]), hidden[:1], return_dict=False)
    m.transformer.patch_embedding.frame_actions = None
    m.save_pretrained(tmp_path / "wm")
    back = WorldModel.from_pretrained(tmp_path / "wm")
    assert torch.equal(back.imagine(frame, b["caption"][1], n=2, steps=2, seed=1),
                       m.imagine(frame, b["caption"][1], n=2, steps=2, seed=1))


def test_churn_draws_fresh_noise_each_step_and_lands_on_the_predicted_sample():
    """`churn` re-noises each step's estimate of the clean sample with a seeded fresh draw: the same seed gives
    the same futures, another churn other futures, and joint planes stay constant over their frame. Where the
    model predicts one clean sample whatever its input, the ODE sampler (churn 0) and the fully ancestral one
    (churn 1) both end on that sample: the re-noising keeps the estimate of x0 and replaces only noise."""
    torch.manual_seed(0)
    m = WorldModel(tiny_cfg(imagine_joints=True, joint_loss_weight=1.0)).eval()
    frame, pose = torch.rand(3, S, S), torch.zeros(16)

    def draw(churn, seed=0):
        return m.imagine_joints(frame, "pick the red cube", n=3, steps=4, seed=seed, pose=pose, churn=churn)

    v0, j0 = draw(0.0)
    v1, j1 = draw(0.7)
    v1b, j1b = draw(0.7)
    assert torch.equal(v1, v1b) and torch.equal(j1, j1b)
    assert (v1 - v0).abs().max() > 1e-3 and (j1 - j0).abs().max() > 1e-3
    assert torch.isfinite(v1).all() and torch.isfinite(j1).all()
    for bad in (-0.1, 1.5):
        with pytest.raises(PolicyError, match="churn must be in"):
            draw(bad)

    target = {}

    def constant(x, timestep, *a):  # the velocity towards one clean sample, whatever the input
        c, k = m.video_channels, m.video_channels + m.joint_channels
        if "x0" not in target:
            x0 = torch.randn(k, *x.shape[2:], generator=torch.Generator().manual_seed(3))
            x0[c:] = x0[c:, :, :1, :1].expand_as(x0[c:]).clone()
            target["x0"] = x0
        sigma = (timestep / 1000.0).view(-1, 1, 1, 1, 1)
        return (x[:, :k] - target["x0"]) / sigma

    m._denoise = constant
    (va, ja), (vb, jb) = draw(0.0, seed=1), draw(1.0, seed=2)
    assert torch.allclose(ja[:, 1:], jb[:, 1:], atol=1e-4) and torch.allclose(va, vb, atol=1e-4)


def test_text_numbers_read_number_words_as_values(tmp_path):
    """`text_numbers`: each number word gets its value's features (aligned with the hash ids, BOS first), two
    near values get near features and far ones do not, the projection trains with the model and survives a
    round trip; without it a number is only its hash bucket. A pretrained encoder refuses it."""
    from policies.world_model.modeling_text_encoder import number_features

    feats = number_features(["reach 45 cm ahead, 20 cm left", "no numbers here"], 12)
    assert feats.shape[:2] == (2, 12)
    assert feats[0, 2, 0].item() == pytest.approx(0.45) and feats[0, 6, 0].item() == pytest.approx(0.20)
    others = [i for i in range(12) if i not in (2, 6)]
    assert feats[0, others].abs().sum() == 0 and feats[1].abs().sum() == 0
    near = (number_features(["46"], 4)[0, 1] - number_features(["45"], 4)[0, 1]).norm()
    far = (number_features(["70"], 4)[0, 1] - number_features(["45"], 4)[0, 1]).norm()
    assert near < 0.5 * far

    torch.manual_seed(0)
    m = WorldModel(tiny_cfg(text_numbers=True))
    assert m.text_encoder.numbers is not None and WorldModel(tiny_cfg()).text_encoder.numbers is None
    h45, _ = m.text_encoder(["at 45 cm"])
    h46, _ = m.text_encoder(["at 46 cm"])
    assert not torch.equal(h45, h46)
    m.train()
    b = batch()
    b["caption"] = ["pick the cube 45 cm ahead", "pick the cube 20 cm ahead"]
    m(b)[0].backward()
    assert m.text_encoder.numbers.weight.grad is not None and m.text_encoder.numbers.weight.grad.abs().sum() > 0
    m.eval()
    m.save_pretrained(tmp_path / "wm")
    loaded = WorldModel.from_pretrained(tmp_path / "wm")
    assert loaded.cfg.text_numbers and torch.equal(loaded.text_encoder.numbers.weight, m.text_encoder.numbers.weight)
    with pytest.raises(ValueError, match="text_numbers"):
        WorldModelConfig(text_numbers=True, text_encoder="pretrained")


def test_goal_joints_condition_the_imagined_joints_on_the_grasp_goal(tmp_path):
    """`goal_joints`: the grasp goal enters as conditioning planes and a flag. Training needs the batch's goal
    (NaN rows: none); a model trained on clips whose joints move to their goal imagines them moving towards the
    goal it is given, on either side; the goal survives a checkpoint; a bad goal, or a goal for a model without
    the channels, is refused; no goal (flag 0) still samples."""
    with pytest.raises(ValueError, match="goal_joints needs imagine_joints"):
        tiny_cfg(goal_joints=True)
    torch.manual_seed(0)
    m = WorldModel(tiny_cfg(num_layers=2, imagine_joints=True, goal_joints=True, goal_dropout=0.0,
                            joint_loss_weight=1.0, prediction="sample", action_conditioning=False))
    assert m.transformer.config.in_channels == 2 * (3 + 16) + 1 + 17
    m.fit_joint_stats(torch.randn(64, 16) * 0.5)
    start = torch.zeros(4, 16)
    goal = torch.zeros(4, 16)
    goal[:, 0] = torch.tensor([1.0, -1.0, 1.0, -1.0])  # the first joint goes up or down, as the goal says
    poses = start[:, None] + torch.linspace(0, 1, 3)[None, :, None] * (goal - start)[:, None]
    b = batch(b=4, actions=False, success=(float("nan"),) * 4) | {"poses": poses}
    b["video"][:] = b["video"][:1, :1]  # the same frames: only the goal says where the joint goes
    with pytest.raises(PolicyError, match="needs goal"):
        m(b)
    losses = logged_losses(m, b | {"goal": goal}, "loss_joints", m.parameters(), steps=60, lr=0.01)
    assert losses[-1] < 0.3 * losses[0]
    m.eval()
    frame = b["video"][0, 0]
    ends = [m.imagine_joints(frame, "pick the red cube", n=2, steps=4, seed=0, pose=start[0], goal=goal[k])[1][:, -1, 0]
            for k in (0, 1)]
    assert (ends[0] > 0.5).all() and (ends[1] < -0.5).all()
    _, none = m.imagine_joints(frame, "pick the red cube", n=2, steps=4, seed=0, pose=start[0])
    assert torch.isfinite(none).all()
    for bad in (torch.tensor([float("nan")] + [0.0] * 15), torch.zeros(15)):
        with pytest.raises(PolicyError, match="goal must be 16 finite"):
            m.imagine_joints(frame, "pick the red cube", n=2, steps=2, pose=start[0], goal=bad)
    m.save_pretrained(tmp_path / "wm")
    back = WorldModel.from_pretrained(tmp_path / "wm")
    assert back.goal_channels == 17
    assert torch.allclose(back.imagine_joints(frame, "pick the red cube", n=2, steps=4, seed=0, pose=start[0],
                                              goal=goal[0])[1][:, -1, 0], ends[0])
    plain = WorldModel(tiny_cfg(imagine_joints=True)).eval()
    with pytest.raises(PolicyError, match="without goal_joints"):
        plain.imagine_joints(frame, "pick the red cube", n=2, steps=2, pose=start[0], goal=goal[0])


def test_two_goals_each_have_their_planes_and_flag():
    """`goal_count=2` (the grasp and the carry): each goal gets its planes and flag; a goal of either shape, or a
    row of NaN (that goal unknown), samples; a partly NaN row is refused; a model of one goal reads the first row."""
    with pytest.raises(ValueError, match="goal_count"):
        tiny_cfg(imagine_joints=True, goal_joints=True, goal_count=3)
    torch.manual_seed(0)
    m = WorldModel(tiny_cfg(imagine_joints=True, goal_joints=True, goal_count=2)).eval()
    assert m.transformer.config.in_channels == 2 * (3 + 16) + 1 + 2 * 17
    goals = torch.stack([torch.full((16,), 0.5), torch.full((16,), -0.5)])
    planes = m._goal_planes(goals[None], 1, 2, 4, 4)
    assert planes.shape == (1, 34, 2, 4, 4)
    assert torch.equal(planes[0, [16, 33], 0, 0, 0], torch.ones(2))  # both flags
    assert torch.allclose(planes[0, :16, 0, 0, 0], torch.full((16,), 0.5))  # unit stats: the goal itself
    unknown = m._goal_planes(torch.stack([goals[0], torch.full((16,), float("nan"))])[None], 1, 2, 4, 4)
    assert unknown[0, 16, 0, 0, 0] == 1 and unknown[0, 33, 0, 0, 0] == 0 and unknown[0, 17:33].abs().sum() == 0
    frame, pose = torch.rand(3, S, S), torch.zeros(16)
    for goal in (goals, goals[0], torch.stack([goals[0], torch.full((16,), float("nan"))])):
        _, joints = m.imagine_joints(frame, "pick the red cube", n=2, steps=2, pose=pose, goal=goal)
        assert torch.isfinite(joints).all()
    partly = goals.clone()
    partly[1, 3] = float("nan")
    with pytest.raises(PolicyError, match="goal must be"):
        m.imagine_joints(frame, "pick the red cube", n=2, steps=2, pose=pose, goal=partly)
    one = WorldModel(tiny_cfg(imagine_joints=True, goal_joints=True)).eval()
    assert torch.equal(one._goal_planes(goals[None], 1, 2, 4, 4), one._goal_planes(goals[:1], 1, 2, 4, 4))


def test_goal_guidance_extrapolates_from_the_goal_free_branch():
    """`goal_guidance` w: v = v_goal + (w - 1)(v_goal - v_unknown). Without text guidance, 0 gives the future imagined
    with the goals unknown; 1 gives the plain one, with or without text guidance beside it (whose terms add: at 0 both
    terms are the goal-free model's only without it); other values differ from both; a bad value is refused, and a
    task without goals ignores it."""
    torch.manual_seed(0)
    m = WorldModel(tiny_cfg(imagine_joints=True, goal_joints=True, goal_count=2)).eval()
    frame, pose = torch.rand(3, S, S), torch.zeros(16)
    goals = torch.stack([torch.full((16,), 0.5), torch.full((16,), -0.5)])

    def joints(text=1.0, **kw):
        return m.imagine_joints(frame, "pick the red cube", n=2, steps=3, seed=1, pose=pose, guidance=text, **kw)[1]

    for text in (1.0, 2.0):
        unknown, plain = joints(text), joints(text, goal=goals)
        if text == 1.0:
            assert torch.allclose(joints(text, goal=goals, goal_guidance=0.0), unknown, atol=1e-5)
        assert torch.equal(joints(text, goal=goals, goal_guidance=1.0), plain)
        pushed = joints(text, goal=goals, goal_guidance=3.0)
        assert torch.isfinite(pushed).all()
        assert (pushed - plain).abs().max() > 1e-4 and (pushed - unknown).abs().max() > 1e-4
    assert torch.equal(joints(goal_guidance=3.0), joints())  # no goals: nothing to guide
    for bad in (-1.0, float("nan")):
        with pytest.raises(PolicyError, match="goal_guidance"):
            joints(goal=goals, goal_guidance=bad)


def test_goal_guidance_per_future_matches_each_scale_alone():
    """A list of goal guidances gives future k what a batch with that one scale gives it (its own starting noise); a
    list of the wrong length or with a bad value is refused."""
    torch.manual_seed(0)
    m = WorldModel(tiny_cfg(imagine_joints=True, goal_joints=True, goal_count=2)).eval()
    frame, pose = torch.rand(3, S, S), torch.zeros(16)
    goals = torch.stack([torch.full((16,), 0.5), torch.full((16,), -0.5)])

    def joints(g):
        return m.imagine_joints(frame, "pick the red cube", n=3, steps=3, seed=1, pose=pose, goal=goals,
                                goal_guidance=g)[1]

    mixed = joints([1.0, 3.0, 0.0])
    for k, g in enumerate((1.0, 3.0, 0.0)):
        assert torch.allclose(mixed[k], joints(g)[k], atol=1e-5)
    assert (mixed[1] - joints(1.0)[1]).abs().max() > 1e-4
    for bad in ([1.0, 2.0], [1.0, float("inf"), 1.0], [1.0, -0.5, 1.0]):
        with pytest.raises(PolicyError, match="goal_guidance"):
            joints(bad)
