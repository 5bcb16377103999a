"""Generators: our architecture at every size, Wav2Lip's published layout, checkpoint detection."""

import numpy as np
import pytest
import torch

from conftest import wav2lip_file
from engine.checkpoints import CheckpointError
from engine.models import load as load_generator
from engine.models.generator import save_generator
from engine.models.generator import Generator, GeneratorConfig


@pytest.mark.parametrize("size", [96, 128, 192, 256])
def test_generator_builds_and_runs_at_each_size(size):
    g = Generator(GeneratorConfig(size=size, width=0.125)).eval()
    faces = torch.rand(2, 6, size, size)
    faces[:, :3, size // 2:] = 0
    out = g(faces, torch.rand(2, 1, 80, 16) * 8 - 4)
    assert out.shape == (2, 3, size, size)
    assert out.min() >= 0 and out.max() <= 1


def test_generator_has_separate_identity_and_pose_encoders_and_uses_audio(small_generator):
    g = small_generator
    names = {n.split(".")[0] for n, _ in g.named_parameters()}
    assert {"identity_encoder", "pose_encoder", "audio_encoder", "fusion", "decoder"} <= names
    faces = torch.rand(1, 6, 96, 96, requires_grad=True)
    mels = (torch.rand(1, 1, 80, 16) * 8 - 4).requires_grad_()
    g(faces, mels)[:, :, 48:].sum().backward()
    assert mels.grad.abs().sum() > 0  # the mouth depends on the audio
    assert faces.grad[:, :3].abs().sum() > 0 and faces.grad[:, 3:].abs().sum() > 0  # on pose and identity
    with pytest.raises(ValueError):
        GeneratorConfig(size=100).scales()


def test_ours_roundtrip(tmp_path, small_generator):
    path = tmp_path / "g.pt"
    save_generator(small_generator, path, {"steps": 1})
    g = load_generator(path)
    x, m = torch.rand(3, 6, 96, 96), torch.rand(3, 1, 80, 16)
    assert torch.equal(g(x, m), small_generator(x, m))
    assert g.info.kind == "dubcam" and g.meta["steps"] == 1


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_wav2lip_published_layout_loads_and_flips_bgr(tmp_path, prefix):
    net, path = wav2lip_file(tmp_path, prefix)
    assert "face_encoder_blocks.0.0.conv_block.0.weight" in net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == 36_298_035
    g = load_generator(path)
    assert g.info.kind == "wav2lip" and g.info.mel_offset_s == 0.0 and g.info.identity == "current"
    rgb = torch.rand(1, 6, 96, 96)
    m = torch.rand(1, 1, 80, 16)
    with torch.no_grad():
        ours = g(rgb, m)
        ref = net(rgb[:, [2, 1, 0, 5, 4, 3]], m)[:, [2, 1, 0]]
    assert torch.allclose(ours, ref)


def test_wrong_kinds_are_refused_with_a_clear_message(tmp_path):
    from engine.models.blocks import ConvBlock

    expert = tmp_path / "lipsync_expert.pth"
    torch.save({"state_dict": {"face_encoder.0.conv_block.0.weight": torch.zeros(1),
                               "audio_encoder.0.conv_block.0.weight": torch.zeros(1)}}, expert)
    with pytest.raises(CheckpointError, match="lip-sync expert"):
        load_generator(expert)

    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not a known checkpoint"):
        load_generator(other)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_generator(evil)

    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_generator(text)

    truncated = tmp_path / "cut.pt"
    _, full = wav2lip_file(tmp_path)
    truncated.write_bytes(full.read_bytes()[:100_000])
    with pytest.raises(CheckpointError):
        load_generator(truncated)

    with pytest.raises(FileNotFoundError):
        load_generator(tmp_path / "nope.pt")
    assert ConvBlock(4, 4, 3, 1, 1, residual=True)(torch.rand(1, 4, 8, 8)).shape == (1, 4, 8, 8)


@pytest.mark.parametrize("size", [96, 128])
def test_warp_decoder_starts_as_the_identity_warp(size):
    """The warp decoder's flow and blend heads start at zero: the warp is the identity map (the output is
    half the identity reference, half the RGB branch), and the whole model stays differentiable in both."""
    g = Generator(GeneratorConfig(size=size, width=0.125, audio="expert", decoder="warp")).eval()
    faces = torch.rand(2, 6, size, size)
    mels = torch.rand(2, 1, 80, 16) * 8 - 4
    out = g(faces, mels)
    plain = Generator(GeneratorConfig(size=size, width=0.125, audio="expert"))
    plain.load_state_dict({k: v for k, v in g.state_dict().items() if not k.startswith(("flow_head", "blend_head"))})
    rgb = plain.eval()(faces, mels)
    torch.testing.assert_close(out, 0.5 * faces[:, 3:] + 0.5 * rgb, atol=1e-5, rtol=0)
    g.train()
    torch.nn.init.normal_(g.flow_head.weight, std=0.01)
    g(faces, mels).sum().backward()
    assert g.flow_head.weight.grad.abs().sum() > 0 and g.blend_head.weight.grad.abs().sum() > 0


def test_warp_moves_the_identity_reference():
    """A uniform flow of +1/8 of the face side shifts the warped identity 12 px left at 96 px
    (the output samples the identity to the right), borders repeated."""
    g = Generator(GeneratorConfig(size=96, width=0.125, decoder="warp")).eval()
    identity = torch.rand(1, 3, 96, 96)
    flow = torch.full((1, 2, 24, 24), 0.0)
    flow[:, 0] = 1 / 8
    out = g._blend(identity, flow, torch.zeros(1, g.blend_head.in_channels, 96, 96), torch.zeros(1, 3, 96, 96))
    torch.testing.assert_close(out[..., :84], 0.5 * identity[..., 12:], atol=1e-5, rtol=0)


def test_expert_audio_encoder_loads_frozen_and_refuses_another_layout():
    from engine.models.syncnet import SyncNetColor

    expert = SyncNetColor(width=0.125)
    g = Generator(GeneratorConfig(size=96, width=0.125, audio="expert"))
    g.load_audio_encoder(expert)
    g.train()
    assert not g.audio_encoder.training and g.identity_encoder.training
    assert not any(p.requires_grad for p in g.audio_encoder.parameters())
    mels = torch.rand(3, 1, 80, 16)
    torch.testing.assert_close(g.audio_encoder(mels), expert.eval().audio_encoder(mels))
    with pytest.raises(ValueError, match="model.audio='expert'"):
        Generator(GeneratorConfig(size=96, width=0.125)).load_audio_encoder(expert)  # the Wav2Lip layout
    with pytest.raises(ValueError, match="model.decoder"):
        GeneratorConfig(decoder="flow")


def test_lip_sketch_dots_sit_where_the_points_are():
    """A point at the centre of pixel (x=30, y=60) of a 96-px crop peaks there on its group's map only;
    the maps are 0 far from every point."""
    from engine.models.generator import render_lip_sketch

    points = torch.full((1, 33, 2), 0.1)  # every point at pixel (9.1, 9.1)
    points[0, 14] = torch.tensor([30.5 / 96, 60.5 / 96])  # an inner-lip point
    maps = render_lip_sketch(points, 96)
    assert maps.shape == (1, 4, 96, 96)
    inner = maps[0, 1]
    assert float(inner[60, 30]) == pytest.approx(1.0, abs=1e-6)
    assert inner.argmax() == 60 * 96 + 30
    assert float(maps[0, 0, 60, 30]) < 1e-6 and float(maps[0, 2, 60, 30]) < 1e-6
    assert float(maps[0, :, 90, 90].max()) < 1e-6


def test_mouth_interior_fills_the_opening_of_the_inner_lip_and_nothing_of_a_closed_mouth():
    """mouth_interior on the mean lip shape: closed (its 2-px gap) it is nearly empty; with the lower inner lip
    8 px lower it is 1 well inside the opening, 0 outside, whichever way the contour runs."""
    from conftest import mean_identity_lips
    from engine.models.generator import mouth_interior

    own = torch.from_numpy(mean_identity_lips()[1])[None]
    closed = mouth_interior(own, 96)
    opened = own.clone()
    opened[0, 17:20, 1] += 8 / 96  # dlib 65-67, the lower inner lip
    x0 = float(opened[0, 12, 0] * 96)
    cx, cy = (opened[0, 12:20].mean(0) * 96).long().tolist()
    inside = mouth_interior(opened, 96)[0, 0]
    assert float(closed.sum()) < 20 and float(inside.sum()) > 80
    assert float(inside[cy, cx]) > 0.99 and float(inside[cy - 8, cx]) < 0.01 and float(inside[cy, int(x0) - 3]) < 0.01
    reversed_contour = opened.clone()
    reversed_contour[0, 12:20] = opened[0, 12:20].flip(0)
    torch.testing.assert_close(mouth_interior(reversed_contour, 96)[0, 0], inside, atol=1e-5, rtol=0)


def test_warp_keeps_the_references_own_opening_and_leaves_a_new_one_to_the_rgb_branch():
    """Warp generator whose blend head says "all warp": inside a drawn opening that the reference shows too
    (the same points), the output is the reference's pixels (its teeth); where the drawn mouth opens over the
    reference's closed lips, it is the RGB branch's, whatever the blend head says."""
    from conftest import mean_identity_lips
    from engine.inputs import generator_input
    from engine.models.generator import mouth_interior

    gen = Generator(GeneratorConfig(size=96, width=0.125, audio="expert", decoder="warp", lip_sketch=True)).eval()
    with torch.no_grad():
        gen.blend_head.bias.fill_(30.0)
    closed = mean_identity_lips()
    opened = closed.copy()
    opened[:, 17:20, 1] += 8 / 96  # the lower inner lip 8 px lower
    drawn = torch.from_numpy(opened[1])[None]
    inside = mouth_interior(drawn, 96)[0, 0] > 0.99
    identity = np.full((1, 3, 96, 96), 0.9, np.float32)  # a bright reference: "teeth" wherever it is sampled
    mels = torch.zeros(1, 1, 80, 16)
    with torch.no_grad():
        shown = gen(torch.from_numpy(generator_input(np.zeros_like(identity), identity, opened)), mels, lips=drawn)
        new = gen(torch.from_numpy(generator_input(np.zeros_like(identity), identity, closed)), mels, lips=drawn)
    assert inside.sum() > 25
    assert float((shown[0, :, inside] - 0.9).abs().max()) < 0.01
    assert float((new[0, :, inside] - 0.9).abs().min()) > 0.05


def test_lip_flow_carries_the_references_points_onto_the_drawn_ones():
    """lip_flow: sampling at p + flow(p) finds source_i at target_i (within the interpolation's shrink), the
    flow and its coverage fade far from the points; in a warp generator whose blend is all warp, a bright spot
    at the reference's lip point moves in the output to where the sketch draws that point."""
    from engine.models.generator import lip_flow

    source = torch.full((1, 33, 2), 0.1)
    target = source.clone()
    source[0, 14] = torch.tensor([40.5 / 96, 60.5 / 96])
    target[0, 14] = torch.tensor([40.5 / 96, 66.5 / 96])  # point 14 goes 6 px down
    flow, coverage = lip_flow(source, target, 96)
    assert flow.shape == (1, 2, 96, 96) and coverage.shape == (1, 1, 96, 96)
    assert float(flow[0, 1, 66, 40]) == pytest.approx(-6 / 96, rel=0.06) and abs(float(flow[0, 0, 66, 40])) < 1e-6
    assert float(coverage[0, 0, 66, 40]) > 0.9 and float(coverage[0, 0, 66, 80]) < 1e-3
    assert float(flow[0, :, 66, 80].abs().max()) < 1e-6 and float(flow[0, :, 9, 9].abs().max()) < 1e-6

    from conftest import mean_identity_lips
    from engine.inputs import generator_input

    gen = Generator(GeneratorConfig(size=96, width=0.125, audio="expert", decoder="warp", lip_sketch=True)).eval()
    with torch.no_grad():
        gen.blend_head.bias.fill_(30.0)  # the output is the warped reference alone
    lips = mean_identity_lips()
    own = torch.from_numpy(lips[1])[None]
    i = 14  # the middle of the upper inner lip
    x, y = (own[0, i] * 96).long().tolist()
    identity = np.zeros((1, 3, 96, 96), np.float32)
    identity[0, :, y, x] = 1.0
    faces = torch.from_numpy(generator_input(np.zeros_like(identity), identity, lips))
    drawn = own.clone()
    drawn[0, 12:20, 1] += 5 / 96  # the inner lip 5 px lower
    with torch.no_grad():
        out = gen(faces, torch.zeros(1, 1, 80, 16), lips=drawn)[0, 0]
    peak_y, peak_x = divmod(int(out.argmax()), 96)
    assert abs(peak_x - x) <= 1 and 3 <= peak_y - y <= 6 and float(out[y, x]) < 0.5 * float(out.max())


def test_lip_sketch_generator_starts_as_the_grown_model_and_follows_the_sketch():
    """A lip-sketch generator grown from one without it (train.run._grow_state) gives the same images at
    first outside the drawn mouth's opening (the identity reference's lip points in the masked half do not
    reach its pose encoder, and with the drawn points on the reference's own the warp's lip flow is zero;
    inside the opening the blend is the RGB branch's); the decoder
    reads the sketch (the output depends on the points given), the predicted points start at the identity
    reference's, and lip_gain scales only the displacement."""
    from conftest import mean_identity_lips
    from engine.inputs import generator_input
    from train.run import _grow_state

    cfg = dict(size=96, width=0.125, audio="expert", decoder="warp")
    old = Generator(GeneratorConfig(**cfg)).eval()
    new = Generator(GeneratorConfig(**cfg, lip_sketch=True))
    new.load_state_dict(_grow_state(new, old.state_dict(), "test"))
    new.eval()
    images = np.random.default_rng(0).random((2, 3, 96, 96), dtype=np.float32)
    reference = mean_identity_lips() + np.float32(0.01)
    faces = torch.from_numpy(generator_input(images, images[::-1], reference))
    mels = torch.rand(2, 1, 80, 16) * 8 - 4
    plain = torch.from_numpy(generator_input(images, images[::-1]))
    from engine.models.generator import mouth_interior

    outside = mouth_interior(torch.from_numpy(reference[0])[None], 96)[0, 0] < 1e-6
    same = (new(faces, mels) - old(plain, mels)).abs().amax(dim=(0, 1))
    assert float(same[outside].max()) < 1e-6 and outside.float().mean() > 0.95
    out, points = new(faces, mels, return_lips=True)
    torch.testing.assert_close(points, torch.from_numpy(reference[0]).expand(2, 33, 2))  # no displacement yet
    torch.nn.init.normal_(new.output_block[0].conv_block[0].weight, std=0.1)  # let the finest level's sketch through
    moved = points.clone()
    moved[:, 12:20, 1] += 4 / 96  # the inner lip 4 px lower
    assert (new(faces, mels, lips=moved) - new(faces, mels, lips=points)).abs().max() > 1e-3
    torch.nn.init.normal_(new.lip_delta[-1].weight, std=0.05)
    _, raw = new(faces, mels, return_lips=True)
    with torch.no_grad():
        new.lip_gain.fill_(2.0)
    again, raw2 = new(faces, mels, return_lips=True)
    torch.testing.assert_close(raw2, raw)  # the returned points are before the gain
    assert (again - new.eval()(faces, mels, lips=raw)).abs().max() > 1e-4  # the drawn ones are not
    with pytest.raises(RuntimeError, match="cannot grow"):
        _grow_state(new, Generator(GeneratorConfig(size=96, width=0.25, audio="expert", decoder="warp"))
                    .state_dict(), "test")


def test_resting_lip_predictor_reads_the_resting_shape_and_starts_at_it():
    """lip_predictor="resting": a fresh predictor (last layer zero) returns the resting shape itself; with
    weights, two references whose posed points differ only in how open the mouth is give different
    predictions for the same audio and faces; the bottleneck predictor's checkpoints keep their layout."""
    from conftest import mean_identity_lips
    from engine.inputs import generator_input

    cfg = dict(size=96, width=0.125, audio="expert", decoder="warp", lip_sketch=True)
    assert GeneratorConfig(**cfg).lip_predictor == "bottleneck"
    with pytest.raises(ValueError, match="lip_predictor must be one of bottleneck, resting"):
        GeneratorConfig(**cfg, lip_predictor="lstm")
    gen = Generator(GeneratorConfig(**cfg, lip_predictor="resting")).eval()
    closed = mean_identity_lips()
    opened = closed.copy()
    opened[:, 17:20, 1] += 6 / 96
    rng = np.random.default_rng(0)
    face = rng.random((1, 3, 96, 96), dtype=np.float32)
    mels = torch.from_numpy(rng.uniform(-4, 0, (1, 1, 80, 16)).astype(np.float32))
    inputs = [torch.from_numpy(generator_input(face, face, lips)) for lips in (closed, opened)]
    with torch.no_grad():
        _, fresh = gen(inputs[0], mels, return_lips=True)
        assert torch.allclose(fresh, torch.from_numpy(closed[0])[None], atol=1e-6)
        torch.nn.init.normal_(gen.lip_delta[-1].weight, std=0.05)
        a = gen(inputs[0], mels, return_lips=True)[1] - torch.from_numpy(closed[0])[None]
        b = gen(inputs[1], mels, return_lips=True)[1] - torch.from_numpy(opened[0])[None]
    assert float((a - b).abs().max()) > 1e-4  # the displacement depends on the resting shape


def test_lip_context_hears_past_windows_for_the_lips_only():
    """lip_context=3: the mel input is 19 frames of past audio before the 0.2 s window (the windows 0.24, 0.16 and
    0.08 s earlier: starts 0, 6, 13, 19); changing only that past changes the predicted lips, not the decoder's
    audio, so with the sketch given (teacher forcing) the image is the same; a mel of another width is refused,
    and lip_context needs a resting lip predictor."""
    from conftest import mean_identity_lips
    from engine.inputs import generator_input

    cfg = dict(size=96, width=0.125, audio="expert", decoder="warp", lip_sketch=True, lip_predictor="resting")
    with pytest.raises(ValueError, match="lip_context"):
        GeneratorConfig(**{**cfg, "lip_predictor": "bottleneck"}, lip_context=3)
    assert GeneratorConfig(**cfg).context_starts() == [0] and Generator(GeneratorConfig(**cfg)).info.mel_frames == 16
    config = GeneratorConfig(**cfg, lip_context=3)
    assert config.context_starts() == [0, 6, 13, 19]
    torch.manual_seed(0)
    gen = Generator(config).eval()
    assert gen.info.mel_context == 19 and gen.info.mel_frames == 35 and gen.info.lookahead_s == pytest.approx(0.125)
    torch.nn.init.normal_(gen.lip_delta[-1].weight, std=0.05)
    rng = np.random.default_rng(0)
    face = rng.random((2, 3, 96, 96), dtype=np.float32)
    faces = torch.from_numpy(generator_input(face, face[0], mean_identity_lips()))
    mels = torch.from_numpy(rng.uniform(-4, 0, (2, 1, 80, 35)).astype(np.float32))
    other = mels.clone()
    other[..., :19] = torch.from_numpy(rng.uniform(-4, 0, (2, 1, 80, 19)).astype(np.float32))
    with torch.no_grad():
        audio, heard = gen.hear(mels)
        assert audio.shape == (2, 64, 1, 1) and heard.shape == (2, 256, 1, 1)
        assert torch.equal(heard[:, 192:], audio) and torch.equal(gen.hear(other)[0], audio)
        (_, lips_a), (_, lips_b) = gen(faces, mels, return_lips=True), gen(faces, other, return_lips=True)
        assert float((lips_a - lips_b).abs().max()) > 1e-4
        drawn = torch.from_numpy(mean_identity_lips()[0]).expand(2, -1, -1)
        assert torch.equal(gen(faces, mels, lips=drawn), gen(faces, other, lips=drawn))
        with pytest.raises(ValueError, match="mels of 16 frames, this generator takes 35"):
            gen(faces, mels[..., -16:])
