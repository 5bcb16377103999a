"""AV-HuBERT encoder: parity with the spec's equations, published key layout,
fairseq checkpoint loading (spec §1.1-1.5)."""

from __future__ import annotations

import collections
import math
import pickle
import typing

import pytest
import torch
import torch.nn.functional as F
from conftest import AVHUBERT_SMALL as SMALL
from conftest import MODEL_CFG, TASK_CFG, fairseq_checkpoint, pretrained_file, randomize, register_fake_classes

from engine.fairseq_pickle import load_fairseq_checkpoint
from engine.models.avhubert import BASE, LARGE, AVHubert, AVHubertConfig

SEQ2SEQ = "encoder.w2v_model."


def small_model(seed: int = 0) -> AVHubert:
    return randomize(AVHubert(SMALL), seed)


def inputs(batch: int = 2, frames: int = 6, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 104, frames, generator=gen), torch.randn(batch, 1, frames, 88, 88, generator=gen)


# ---------------------------------------------------------------------------
# A second, literal transcription of spec §1.2-1.4, op by op on the state dict.


def reference_features(sd, cfg, audio, video, padding_mask=None, output_layer=None):
    sd = {k: v.double() for k, v in sd.items() if not k.endswith("num_batches_tracked")}

    def bn(x, p):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        scale = sd[p + ".weight"].view(shape) / torch.sqrt(sd[p + ".running_var"].view(shape) + 1e-5)
        return (x - sd[p + ".running_mean"].view(shape)) * scale + sd[p + ".bias"].view(shape)

    def prelu(x, p):
        slope = sd[p + ".weight"].view((1, -1) + (1,) * (x.ndim - 2))
        return torch.where(x >= 0, x, slope * x)

    def layer_norm(x, p):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * sd[p + ".weight"] + sd[p + ".bias"]

    def linear(x, p):
        return x @ sd[p + ".weight"].T + sd[p + ".bias"]

    def gelu(x):
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))

    def video_frontend(video):
        r = "feature_extractor_video.resnet."
        x = F.conv3d(video, sd[r + "frontend3D.0.weight"], stride=(1, 2, 2), padding=(2, 3, 3))
        x = F.max_pool3d(prelu(bn(x, r + "frontend3D.1"), r + "frontend3D.2"), (1, 3, 3), (1, 2, 2), (0, 1, 1))
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        for layer, first_stride in zip(range(1, 5), (1, 2, 2, 2)):
            for block in range(2):
                p = f"{r}trunk.layer{layer}.{block}."
                stride = first_stride if block == 0 else 1
                out = prelu(bn(F.conv2d(x, sd[p + "conv1.weight"], stride=stride, padding=1), p + "bn1"), p + "relu1")
                out = bn(F.conv2d(out, sd[p + "conv2.weight"], padding=1), p + "bn2")
                if p + "downsample.0.weight" in sd:
                    x = bn(F.conv2d(x, sd[p + "downsample.0.weight"], stride=stride), p + "downsample.1")
                x = prelu(out + x, p + "relu2")
        return linear(x.mean((2, 3)).view(b, t, -1), "feature_extractor_video.proj")

    dim = cfg.encoder_embed_dim
    a = None if audio is None else linear(audio.double().transpose(1, 2), "feature_extractor_audio.proj")
    v = None if video is None else video_frontend(video.double())
    a = torch.zeros_like(v) if a is None else a
    v = torch.zeros_like(a) if v is None else v
    x = linear(layer_norm(torch.cat([a, v], -1), "layer_norm"), "post_extract_proj")
    batch, frames, _ = x.shape
    pad = torch.zeros(batch, frames, dtype=torch.bool) if padding_mask is None else padding_mask
    x = torch.where(pad[..., None], 0.0, x)

    g, v_ = sd["encoder.pos_conv.0.weight_g"], sd["encoder.pos_conv.0.weight_v"]
    w = g * v_ / torch.sqrt((v_**2).sum(dim=(0, 1), keepdim=True))
    conv = F.conv1d(x.transpose(1, 2), w, sd["encoder.pos_conv.0.bias"], padding=cfg.conv_pos // 2,
                    groups=cfg.conv_pos_groups)
    x = x + gelu(conv[:, :, :frames]).transpose(1, 2)

    heads = cfg.encoder_attention_heads
    head_dim = dim // heads
    for i in range(output_layer or cfg.encoder_layers):
        p = f"encoder.layers.{i}."
        h = layer_norm(x, p + "self_attn_layer_norm")
        q = (linear(h, p + "self_attn.q_proj") * head_dim**-0.5).view(batch, frames, heads, head_dim)
        k = linear(h, p + "self_attn.k_proj").view(batch, frames, heads, head_dim)
        val = linear(h, p + "self_attn.v_proj").view(batch, frames, heads, head_dim)
        scores = torch.einsum("bthd,bshd->bhts", q, k).masked_fill(pad[:, None, None, :], -math.inf)
        attn = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), val).reshape(batch, frames, dim)
        x = x + linear(attn, p + "self_attn.out_proj")
        h = layer_norm(x, p + "final_layer_norm")
        x = x + linear(gelu(linear(h, p + "fc1")), p + "fc2")
    return layer_norm(x, "encoder.layer_norm") if output_layer is None else x


@pytest.mark.parametrize(
    "modalities, output_layer",
    [(("audio", "video"), None), (("audio",), None), (("video",), None), (("audio", "video"), 1)],
)
def test_matches_spec_equations(modalities, output_layer):
    model = small_model()
    audio, video = inputs()
    kwargs = {"audio": audio if "audio" in modalities else None, "video": video if "video" in modalities else None}
    with torch.no_grad():
        ours = model.extract_features(**kwargs, output_layer=output_layer)
    expected = reference_features(model.state_dict(), SMALL, **kwargs, output_layer=output_layer)
    assert ours.shape == (2, 6, 64) and ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), expected, atol=1e-4, rtol=1e-4)


def test_padding_mask_matches_spec_and_unpadded_run():
    model = small_model()
    audio, video = inputs(frames=8)
    pad = torch.zeros(2, 8, dtype=torch.bool)
    pad[1, 5:] = True
    audio[1, :, 5:], video[1, :, 5:] = 0, 0  # the reference collater pads with zeros
    with torch.no_grad():
        ours = model(audio, video, padding_mask=pad)
        alone = model(audio[1:, :, :5], video[1:, :, :5])
    expected = reference_features(model.state_dict(), SMALL, audio, video, padding_mask=pad)
    torch.testing.assert_close(ours.double(), expected, atol=1e-4, rtol=1e-4)
    # Padded frames leak neither through the positional conv nor through attention.
    torch.testing.assert_close(ours[1, :5], alone[0], atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_video_in_eval_mode():
    model = small_model()
    for p in model.parameters():
        p.requires_grad_(False)
    audio, video = inputs(batch=1, frames=4)
    video.requires_grad_(True)
    audio_only = model(audio=audio)
    video_only = model(video=video)
    loss = -F.cosine_similarity(audio_only, video_only, dim=-1).mean()
    loss.backward()
    assert video.grad is not None and torch.isfinite(video.grad).all() and video.grad.abs().sum() > 0


def test_input_errors():
    model = small_model()
    audio, video = inputs()
    with pytest.raises(ValueError, match="audio, video or both"):
        model()
    with pytest.raises(ValueError, match="frame count"):
        model(audio, video[:, :, :5])
    with pytest.raises(ValueError, match="audio must be"):
        model(audio[:, :100])
    with pytest.raises(ValueError, match="output_layer"):
        model(audio, output_layer=3)
    with pytest.raises(ValueError, match="padding_mask"):
        model(audio, padding_mask=torch.zeros(2, 6))


# ---------------------------------------------------------------------------
# Key names and shapes of the published files (spec §1.5 table).


def spec_state_dict_shapes(dim: int, ffn: int, layers: int, groups: int = 16) -> dict[str, tuple]:
    shapes = {}

    def bn(prefix, c):
        shapes.update({f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{prefix}.num_batches_tracked"] = ()

    r = "feature_extractor_video.resnet."
    shapes[r + "frontend3D.0.weight"] = (64, 1, 5, 7, 7)
    bn(r + "frontend3D.1", 64)
    shapes[r + "frontend3D.2.weight"] = (64,)
    cin = 64
    for layer, c in zip(range(1, 5), (64, 128, 256, 512)):
        for block in range(2):
            p = f"{r}trunk.layer{layer}.{block}"
            shapes[p + ".conv1.weight"] = (c, cin if block == 0 else c, 3, 3)
            shapes[p + ".conv2.weight"] = (c, c, 3, 3)
            bn(p + ".bn1", c)
            bn(p + ".bn2", c)
            shapes[p + ".relu1.weight"] = shapes[p + ".relu2.weight"] = (c,)
            if block == 0 and layer > 1:
                shapes[p + ".downsample.0.weight"] = (c, cin, 1, 1)
                bn(p + ".downsample.1", c)
        cin = c
    shapes |= {
        "feature_extractor_video.proj.weight": (dim, 512),
        "feature_extractor_video.proj.bias": (dim,),
        "feature_extractor_audio.proj.weight": (dim, 104),
        "feature_extractor_audio.proj.bias": (dim,),
        "layer_norm.weight": (2 * dim,),
        "layer_norm.bias": (2 * dim,),
        "post_extract_proj.weight": (dim, 2 * dim),
        "post_extract_proj.bias": (dim,),
        "encoder.pos_conv.0.weight_v": (dim, dim // groups, 128),
        "encoder.pos_conv.0.weight_g": (1, 1, 128),
        "encoder.pos_conv.0.bias": (dim,),
        "encoder.layer_norm.weight": (dim,),
        "encoder.layer_norm.bias": (dim,),
    }
    for i in range(layers):
        p = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (dim, dim)
            shapes[f"{p}self_attn.{proj}.bias"] = (dim,)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes[f"{p}{norm}.weight"] = shapes[f"{p}{norm}.bias"] = (dim,)
        shapes |= {p + "fc1.weight": (ffn, dim), p + "fc1.bias": (ffn,), p + "fc2.weight": (dim, ffn),
                   p + "fc2.bias": (dim,)}
    return shapes


@pytest.mark.parametrize("cfg, dim, ffn, layers", [(BASE, 768, 3072, 12), (LARGE, 1024, 4096, 24)])
def test_state_dict_layout_is_the_published_one(cfg, dim, ffn, layers):
    with torch.device("meta"):
        model = AVHubert(cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == spec_state_dict_shapes(dim, ffn, layers)
    if cfg == BASE:
        # + final_proj, label_embs_concat (2004 k-means symbols), mask_emb: 346 keys, 103.3 M parameters.
        assert len(ours) + 4 == 346
        n_params = sum(p.numel() for p in model.parameters()) + 768 * 256 + 256 + 2004 * 256 + 104
        assert round(n_params / 1e6, 1) == 103.3


# ---------------------------------------------------------------------------
# Checkpoint files in the official layout.

def seq2seq_file(model, tmp_path, dictionary_cls):
    state = collections.OrderedDict((SEQ2SEQ + k, v) for k, v in model.state_dict().items())
    state[SEQ2SEQ + "mask_emb"] = torch.rand(104)
    state[SEQ2SEQ + "label_embs_concat"] = torch.rand(24, 16)
    state["decoder.embed_tokens.weight"] = torch.rand(6, 64)
    state["decoder.embed_positions._float_tensor"] = torch.zeros(1)
    state["decoder.layers.0.encoder_attn.k_proj.weight"] = torch.rand(64, 64)
    state["decoder.layer_norm.weight"] = torch.ones(64)
    w2v_args = {"_name": None, "common": {"seed": 1337}, "model": MODEL_CFG, "task": TASK_CFG}
    cfg = {"_name": None, "model": {"_name": "av_hubert_seq2seq", "w2v_path": "/x/base_vox_iter5.pt",
                                    "w2v_args": w2v_args, "decoder_layers": 1, "feature_grad_mult": 1.0},
           "task": {"_name": "av_hubert_pretraining", "labels": ["wrd"]}}
    path = tmp_path / "seq2seq.pt"
    torch.save(fairseq_checkpoint(cfg, state, dictionary_cls), path)
    return path


def assert_same_features(loaded: AVHubert, model: AVHubert):
    assert not loaded.training and loaded.cfg == SMALL
    audio, video = inputs(batch=1, frames=4)
    with torch.no_grad():
        assert torch.equal(loaded(audio, video), model(audio, video))
        assert torch.equal(loaded(video=video), model(video=video))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_loads_pretrained_checkpoint(tmp_path, fake_fairseq, legacy):
    model = small_model()
    path = pretrained_file(model, tmp_path, fake_fairseq, legacy=legacy)
    with pytest.raises(pickle.UnpicklingError):  # why the restricted unpickler exists
        torch.load(path, weights_only=True)
    assert load_fairseq_checkpoint(path)["cfg"]["model"] == MODEL_CFG
    assert_same_features(AVHubert.from_checkpoint(path), model)


def test_loads_seq2seq_checkpoint(tmp_path, fake_fairseq):
    model = small_model(seed=3)
    assert_same_features(AVHubert.from_checkpoint(seq2seq_file(model, tmp_path, fake_fairseq)), model)


def test_missing_config_keys_fall_back_to_base_defaults():
    cfg = {"model": {"_name": "av_hubert_seq2seq", "w2v_args": {"model": {"layer_norm_first": True}}}}
    assert AVHubertConfig.from_fairseq_cfg(cfg) == BASE
    with pytest.raises(ValueError, match="layer_norm_first"):
        AVHubertConfig.from_fairseq_cfg({"model": {"_name": "av_hubert"}})  # reference default is post-LN
    with pytest.raises(ValueError, match="modality_fuse"):
        AVHubertConfig.from_fairseq_cfg({"model": {"layer_norm_first": True, "modality_fuse": "add"}})


# Stand-ins for omegaconf's classes with the same pickled state (omegaconf/base.py: Node.__getstate__
# drops _flags_cache; metadata dataclasses hold typing objects and a defaultdict resolver cache).


class FakeMetadata:
    __module__, __qualname__ = "omegaconf.base", "ContainerMetadata"

    def __init__(self, ref_type, object_type, key):
        self.ref_type, self.object_type, self.optional, self.key = ref_type, object_type, True, key
        self.flags, self.flags_root = {}, False
        self.resolver_cache = collections.defaultdict(dict)
        self.key_type, self.element_type = typing.Any, typing.Any


class FakeNode:
    def __init__(self, parent, key, content=None, value=None):
        meta = FakeMetadata(typing.Any, type(content) if content is not None else None, key)
        if isinstance(content, list):
            meta.ref_type = typing.List[int]
        self.__dict__.update(_metadata=meta, _parent=parent, _flags_cache=None)
        if content is not None:
            self._content = content
        else:
            self._val = value

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_flags_cache"}


class FakeDictConfig(FakeNode):
    __module__, __qualname__ = "omegaconf.dictconfig", "DictConfig"


class FakeListConfig(FakeNode):
    __module__, __qualname__ = "omegaconf.listconfig", "ListConfig"


class FakeAnyNode(FakeNode):
    __module__, __qualname__ = "omegaconf.nodes", "AnyNode"


def as_dict_config(value, parent=None, key=None):
    if isinstance(value, dict):
        node = FakeDictConfig(parent, key, content={})
        node._content.update({k: as_dict_config(v, node, k) for k, v in value.items()})
    elif isinstance(value, list):
        node = FakeListConfig(parent, key, content=[])
        node._content.extend(as_dict_config(v, node, i) for i, v in enumerate(value))
    else:
        node = FakeAnyNode(parent, key, value=value)
    return node


@pytest.fixture
def fake_omegaconf(monkeypatch):
    register_fake_classes(monkeypatch, [FakeDictConfig, FakeListConfig, FakeAnyNode, FakeMetadata])


def test_loads_checkpoint_with_pickled_dict_config(tmp_path, fake_omegaconf, fake_fairseq):
    model = small_model(seed=5)
    cfg = {"_name": None, "model": MODEL_CFG, "task": TASK_CFG, "optimization": {"lr": [0.002], "update_freq": [1]}}
    path = tmp_path / "dictconfig.pt"
    torch.save(fairseq_checkpoint(as_dict_config(cfg), model.state_dict(), fake_fairseq), path)
    assert load_fairseq_checkpoint(path)["cfg"] == cfg
    assert_same_features(AVHubert.from_checkpoint(path), model)


class Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_refuses_other_globals(tmp_path, fake_fairseq):
    marker = tmp_path / "pwned"
    checkpoint = fairseq_checkpoint({"model": MODEL_CFG}, small_model().state_dict(), fake_fairseq)
    checkpoint["extra_state"]["payload"] = Exploit(marker)
    path = tmp_path / "evil.pt"
    torch.save(checkpoint, path)
    with pytest.raises(pickle.UnpicklingError, match=r"posix\.system|os\.system"):
        AVHubert.from_checkpoint(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------
# Crafted files: the restricted unpickler cannot be turned against the process (issue 13).


class _Build:
    """Pickles as ``operator.getitem([target], 0)`` followed by BUILD with ``state``: pickle's way to set
    attributes (``(None, {name: value})`` is setattr) on an object the unpickler resolves as a global."""

    def __init__(self, target, state=None):
        self.target, self.state = target, state

    def __reduce__(self):
        import operator

        if self.state is None:
            return operator.getitem, ([self.target], 0)
        return operator.getitem, ([self.target], 0), self.state


def _crafted(tmp_path, fake_fairseq, payload, legacy=False, name="crafted.pt"):
    checkpoint = fairseq_checkpoint({"model": MODEL_CFG}, {"w": torch.ones(2)}, fake_fairseq)
    checkpoint["extra_state"]["payload"] = payload
    path = tmp_path / name
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_crafted_checkpoint_cannot_poison_later_loads(tmp_path, fake_fairseq, legacy):
    """The file sets ``torch._utils._rebuild_tensor_v2.__defaults__`` (metadata {"neg": True}) through BUILD:
    every later torch.load, weights_only included, would return negated tensors. It is refused, and a
    plain tensor file and a genuine fairseq file loaded afterwards are unchanged."""
    from engine.fairseq_pickle import UnsafeCheckpointError

    rebuild = torch._utils._rebuild_tensor_v2
    defaults = rebuild.__defaults__
    path = _crafted(tmp_path, fake_fairseq, _Build(rebuild, (None, {"__defaults__": ({"neg": True},)})), legacy)
    genuine = tmp_path / "genuine.pt"
    weights = {"w": torch.arange(1.0, 5.0)}
    torch.save(fairseq_checkpoint({"model": MODEL_CFG}, weights, fake_fairseq), genuine)
    plain = tmp_path / "plain.pt"
    torch.save(torch.arange(1.0, 4.0), plain)
    try:
        with pytest.raises(pickle.UnpicklingError):  # torch's own weights-only loader refuses it too
            torch.load(path, weights_only=True)
        with pytest.raises(UnsafeCheckpointError, match=r"refusing to set the state of the function .*_rebuild_tensor_v2"):
            load_fairseq_checkpoint(path)
        assert rebuild.__defaults__ == defaults
        assert torch.equal(torch.load(plain, weights_only=True), torch.arange(1.0, 4.0))
        assert torch.equal(load_fairseq_checkpoint(genuine)["model"]["w"], weights["w"])
    finally:
        rebuild.__defaults__ = defaults  # the code before the fix let the file change it: do not poison the session


@pytest.mark.parametrize("target", ["rebuild_parameter", "storage_class", "getitem", "stub_class"])
def test_build_is_refused_on_everything_but_stubs_dicts_and_tensors(tmp_path, fake_fairseq, target):
    from engine.fairseq_pickle import UnsafeCheckpointError

    obj = {"rebuild_parameter": torch._utils._rebuild_parameter, "storage_class": torch.FloatStorage,
           "getitem": __import__("operator").getitem, "stub_class": fake_fairseq}[target]
    path = _crafted(tmp_path, fake_fairseq, _Build(obj, (None, {"dubcam_marker": 1})))
    with pytest.raises(UnsafeCheckpointError, match="refusing to set the state of"):
        AVHubert.from_checkpoint(path)
    assert not hasattr(obj, "dubcam_marker")


def test_each_load_gets_its_own_rebuild_functions_and_stub_classes(tmp_path, fake_fairseq):
    """What a file can reach of torch's rebuild functions are wrappers made for its load; the stubs are
    classes of that load too. Nothing a file touches outlives its load."""
    from engine.fairseq_pickle import Stub

    cfg = {"model": MODEL_CFG, "fn": _Build(torch._utils._rebuild_tensor_v2), "cls": _Build(fake_fairseq)}
    path = tmp_path / "refs.pt"
    torch.save(fairseq_checkpoint(cfg, {"w": torch.ones(2)}, fake_fairseq), path)
    first, second = load_fairseq_checkpoint(path)["cfg"], load_fairseq_checkpoint(path)["cfg"]
    assert callable(first["fn"]) and first["fn"] is not torch._utils._rebuild_tensor_v2
    assert first["fn"] is not second["fn"]
    assert issubclass(first["cls"], Stub) and first["cls"] is not second["cls"]


def test_codecs_encode_serves_only_protocol_2_bytes(tmp_path, fake_fairseq):
    import codecs

    from engine.fairseq_pickle import UnsafeCheckpointError

    legacy = _crafted(tmp_path, fake_fairseq, b"\x00\xffbytes", legacy=True, name="bytes.pt")  # protocol 2
    assert load_fairseq_checkpoint(legacy)["model"]["w"].tolist() == [1.0, 1.0]

    class Rot13:
        def __reduce__(self):
            return codecs.encode, ("text", "rot13")

    with pytest.raises(UnsafeCheckpointError, match="rot13"):
        load_fairseq_checkpoint(_crafted(tmp_path, fake_fairseq, Rot13(), name="rot13.pt"))


# ---------------------------------------------------------------------------
# Loader errors: one CheckpointError line each (issue 13); pretrained vs fine-tuned.


def test_every_bad_file_is_one_checkpoint_error_line(tmp_path, fake_fairseq):
    import os

    from engine.checkpoints import CheckpointError

    model = small_model()
    good = pretrained_file(model, tmp_path, fake_fairseq)
    data = good.read_bytes()
    bad = {}
    bad["random"] = tmp_path / "random.pt"
    bad["random"].write_bytes(os.urandom(4096))
    bad["truncated"] = tmp_path / "truncated.pt"
    bad["truncated"].write_bytes(data[: len(data) // 2])
    (tmp_path / "legacy").mkdir()
    legacy = pretrained_file(model, tmp_path / "legacy", fake_fairseq, legacy=True)
    bad["truncated-legacy"] = tmp_path / "truncated_legacy.pt"
    bad["truncated-legacy"].write_bytes(legacy.read_bytes()[:4000])
    bad["not-fairseq"] = tmp_path / "generator.pt"
    torch.save({"format": "dubcam-generator", "state_dict": {"w": torch.ones(1)}}, bad["not-fairseq"])
    bad["misfit"] = tmp_path / "misfit.pt"
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.layer_norm")}
    torch.save(fairseq_checkpoint({"model": MODEL_CFG}, state, fake_fairseq), bad["misfit"])
    bad["refused"] = tmp_path / "evil.pt"
    checkpoint = fairseq_checkpoint({"model": MODEL_CFG}, state, fake_fairseq)
    checkpoint["extra_state"]["payload"] = Exploit(tmp_path / "pwned")
    torch.save(checkpoint, bad["refused"])
    messages = {}
    for name, path in bad.items():
        with pytest.raises(CheckpointError) as info:
            AVHubert.from_checkpoint(path)
        messages[name] = str(info.value)
        assert messages[name].startswith(str(path)) and "\n" not in messages[name], (name, messages[name])
    assert "dubcam generator" in messages["not-fairseq"]
    assert "encoder.layer_norm.weight" in messages["misfit"]
    assert "posix.system" in messages["refused"] or "os.system" in messages["refused"]
    assert all("not a readable PyTorch checkpoint" in messages[n] for n in ("random", "truncated", "truncated-legacy"))


def test_pretrained_and_finetuned_files_are_told_apart(tmp_path, fake_fairseq, caplog):
    from engine.models.avhubert import checkpoint_stage

    model = small_model()
    pretrained = pretrained_file(model, tmp_path, fake_fairseq)
    finetuned = seq2seq_file(model, tmp_path, fake_fairseq)
    with caplog.at_level("WARNING", logger="engine.models.avhubert"):
        assert AVHubert.from_checkpoint(finetuned).stage == "fine-tuned"
        assert not caplog.records
        assert AVHubert.from_checkpoint(pretrained).stage == "pretrained"
    assert len(caplog.records) == 1 and "base_vox_433h.pt" in caplog.records[0].getMessage()
    assert checkpoint_stage({"model": {"_name": "av_hubert_ctc"}}, {}) == "fine-tuned"
    assert checkpoint_stage({}, {"encoder.w2v_model.mask_emb": None}) == "fine-tuned"
    assert checkpoint_stage({}, {"label_embs_concat": None}) == "pretrained"
    assert checkpoint_stage({}, {"encoder.layer_norm.weight": None}) == "unknown"
