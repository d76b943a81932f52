"""Release bundles: round trips, method prefixes, resampling, channel conversion, and no unpickling."""

from __future__ import annotations

import pickle

import pytest
import torch
import yaml

from medfm.errors import MedfmError
from medfm.models.bundle import (
    Bundle,
    encoder_state,
    load_bundle,
    load_encoder,
    read_safetensors,
    read_safetensors_metadata,
    save_bundle,
)
from medfm.models.encoders import create_encoder


def encoder_config(name="test_vit", in_chans=1, img_size=32, **extra):
    return {"encoder": {"name": name, "in_chans": in_chans, "img_size": img_size}, **extra}


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_encoder("test_vit").eval()


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def same_output(a, b, x, atol=1e-6):
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x), atol=atol)


def test_encoder_only_round_trip(tmp_path, vit, image):
    config = encoder_config(method=None, encoder_prefix="", normalize={"mean": (0.5,), "std": (0.25,)})
    path = save_bundle(tmp_path / "bundle", vit.state_dict(), config)
    assert sorted(p.name for p in path.iterdir()) == ["MODEL_CARD.md", "config.yaml", "model.safetensors"]
    assert "test_vit" in (path / "MODEL_CARD.md").read_text()
    bundle = load_bundle(path)
    assert bundle.config["normalize"] == {"mean": [0.5], "std": [0.25]}
    assert read_safetensors_metadata(path / "model.safetensors") == {
        "format": "pt",
        "medfm_encoder": "test_vit",
    }
    for loaded in (load_encoder(path), load_encoder(path / "model.safetensors"), create_encoder(path)):
        assert same_output(vit, loaded, image)
    assert same_output(vit, create_encoder(str(path)), image)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left


def test_mae_like_bundle_loads_into_plain_encoder(tmp_path, vit, image):
    state = {f"encoder.{k}": v for k, v in vit.state_dict().items()}
    state |= {"mask_token": torch.zeros(1, 1, 16), "decoder_embed.weight": torch.randn(16, 32)}
    state["decoder_pred.weight"] = torch.randn(64, 16)
    path = save_bundle(tmp_path / "mae", state, encoder_config(method="mae", encoder_prefix="encoder."))
    assert same_output(vit, load_encoder(path), image)
    assert set(encoder_state(load_bundle(path))) == set(vit.state_dict())


def test_prefix_is_recorded_when_missing(tmp_path, vit):
    state = {f"encoder.{k}": v for k, v in vit.state_dict().items()} | {"decoder_embed.weight": torch.ones(2)}
    path = save_bundle(tmp_path / "mae", state, encoder_config(method="mae"))
    assert yaml.safe_load((path / "config.yaml").read_text())["encoder_prefix"] == "encoder."


def test_dino_like_bundle_picks_the_teacher(tmp_path, vit, image):
    torch.manual_seed(5)
    student = create_encoder("test_vit")
    state = {f"teacher_encoder.{k}": v for k, v in vit.state_dict().items()}
    state |= {f"student_encoder.{k}": v for k, v in student.state_dict().items()}
    state |= {"student_head.weight": torch.randn(8, 32), "teacher_head.weight": torch.randn(8, 32)}
    recorded = save_bundle(tmp_path / "dino", state, encoder_config(encoder_prefix="teacher_encoder."))
    assert same_output(vit, load_encoder(recorded), image)
    # Without a recorded prefix the known prefixes are tried in order: the teacher comes before the student.
    guessed = encoder_state(Bundle(recorded, encoder_config(), load_bundle(recorded).state))
    assert all(torch.equal(guessed[k], v) for k, v in vit.state_dict().items())


def test_timm_style_head_is_dropped(tmp_path, vit, image):
    state = dict(vit.state_dict()) | {"head.weight": torch.randn(3, 32), "head.bias": torch.zeros(3)}
    state |= {"fc_norm.weight": torch.ones(32), "fc_norm.bias": torch.zeros(32)}
    path = save_bundle(tmp_path / "timm", state, encoder_config(encoder_prefix=""))
    assert same_output(vit, load_encoder(path), image)


def test_pos_embed_resampled_for_new_img_size_2d(tmp_path, vit):
    path = save_bundle(tmp_path / "b", vit.state_dict(), encoder_config(encoder_prefix=""))
    big = load_encoder(path, img_size=64)
    assert big.pos_embed.shape == (1, 1 + 64, 32) != vit.pos_embed.shape
    assert torch.equal(big.pos_embed[:, :1], vit.pos_embed[:, :1])
    x = torch.randn(1, 1, 64, 64)
    assert same_output(vit, big, x, atol=1e-5)  # vit resamples on the fly, the same way


def test_pos_embed_resampled_for_new_img_size_3d(tmp_path):
    torch.manual_seed(0)
    vol = create_encoder("test_vit3d").eval()
    path = save_bundle(tmp_path / "b3", vol.state_dict(), encoder_config("test_vit3d", img_size=(16, 32, 32)))
    assert load_bundle(path).config["encoder"]["img_size"] == [16, 32, 32]
    same = load_encoder(path)
    x = torch.randn(1, 1, 16, 32, 32)
    assert same_output(vol, same, x)
    big = load_encoder(path, img_size=(8, 64, 32))
    assert big.pos_embed.shape == (1, 1 + 2 * 8 * 4, 32)
    assert torch.equal(big.pos_embed[:, :1], vol.pos_embed[:, :1])
    assert same_output(vol, big, torch.randn(1, 1, 8, 64, 32), atol=1e-5)


def test_in_chans_conversion_both_ways(tmp_path, image):
    torch.manual_seed(0)
    rgb = create_encoder("test_vit", in_chans=3)
    rgb_path = save_bundle(tmp_path / "rgb", rgb.state_dict(), encoder_config(in_chans=3))
    grey = load_encoder(rgb_path, in_chans=1)
    assert grey.in_chans == 1
    with torch.no_grad():
        assert torch.allclose(rgb.eval()(image.repeat(1, 3, 1, 1)), grey.eval()(image), atol=1e-5)

    grey_path = save_bundle(tmp_path / "grey", grey.state_dict(), encoder_config(in_chans=1))
    back = load_encoder(grey_path, in_chans=3)
    assert back.in_chans == 3
    with torch.no_grad():
        assert torch.allclose(back.eval()(image.repeat(1, 3, 1, 1)), grey(image), atol=1e-5)
    with pytest.raises(MedfmError, match="from 3 to 2 input channels"):
        load_encoder(rgb_path, in_chans=2)


def test_refuses_pickle_checkpoints(tmp_path, vit):
    state = vit.state_dict()
    torch.save(state, tmp_path / "model.pt")
    disguised = tmp_path / "disguised"
    disguised.mkdir()
    torch.save(state, disguised / "model.safetensors")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save(state, legacy / "model.safetensors", _use_new_zipfile_serialization=False)
    only_pt = tmp_path / "only_pt"
    only_pt.mkdir()
    torch.save(state, only_pt / "pytorch_model.bin")
    for target in (tmp_path / "model.pt", disguised, legacy, only_pt):
        with pytest.raises(MedfmError, match="is a pickle checkpoint") as info:
            load_bundle(target)
        message = str(info.value)
        assert "arbitrary code" in message and "weights_only=True" in message and "save_file" in message
    with pytest.raises(MedfmError, match="zip"):
        read_safetensors(disguised / "model.safetensors")
    with pytest.raises(MedfmError, match="pickle protocol"):
        read_safetensors(legacy / "model.safetensors")
    for target in (tmp_path / "model.pt", str(tmp_path / "model.pt"), only_pt):
        with pytest.raises(MedfmError, match="never unpickles"):
            create_encoder(target)


def test_corrupt_file_names_the_file(tmp_path, vit):
    path = save_bundle(tmp_path / "b", vit.state_dict(), encoder_config())
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(MedfmError, match=r"model\.safetensors"):
        load_bundle(path)
    weights.write_bytes(b"hello, not weights")
    with pytest.raises(MedfmError, match=r"model\.safetensors is not a valid safetensors file"):
        load_bundle(path)


def test_loading_never_unpickles(tmp_path, vit, image, monkeypatch):
    path = save_bundle(tmp_path / "b", vit.state_dict(), encoder_config())

    def forbidden(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    class NoUnpickler:
        def __init__(self, *args, **kwargs):
            forbidden()

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", NoUnpickler)
    monkeypatch.setattr(torch, "load", forbidden)
    bundle = load_bundle(path)
    assert set(bundle.state) == set(vit.state_dict())
    assert same_output(vit, load_encoder(path), image)


def test_refuses_to_overwrite_unrelated_folder(tmp_path, vit):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(MedfmError, match="refusing to overwrite"):
        save_bundle(folder, vit.state_dict(), encoder_config())
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["results"]


def test_overwrites_a_bundle(tmp_path, vit):
    path = save_bundle(tmp_path / "b", {"x": torch.zeros(2)}, encoder_config(), card="old")
    save_bundle(path, vit.state_dict(), encoder_config(steps=10), card="# new card\n")
    assert (path / "MODEL_CARD.md").read_text() == "# new card\n"
    assert load_bundle(path).config["steps"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_shared_and_noncontiguous_tensors_are_saved(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    state = {"a": base, "b": base, "row": base[1], "t": base.t()}
    path = save_bundle(tmp_path / "s", state, encoder_config())
    loaded = load_bundle(path).state
    for key, value in state.items():
        assert torch.equal(loaded[key], value)


def test_mismatch_lists_keys(tmp_path, vit):
    state = dict(vit.state_dict())
    del state["norm.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = save_bundle(tmp_path / "bad", state, encoder_config())
    with pytest.raises(MedfmError, match=r"missing keys: norm\.weight.*unexpected keys: extra\.weight"):
        load_encoder(path)
    with pytest.raises(MedfmError, match="shape mismatch"):
        load_encoder(save_bundle(tmp_path / "wrong", vit.state_dict(), encoder_config()), patch_size=4)


def test_config_needs_encoder_name(tmp_path, vit):
    with pytest.raises(MedfmError, match=r"encoder\.name"):
        save_bundle(tmp_path / "b", vit.state_dict(), {"method": "mae"})
