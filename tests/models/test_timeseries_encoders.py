"""The ECG CNN and ICU GRU encoders, and the signal and series backbones that feed them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfm.errors import ConfigError
from medfm.evaluate.tasks.base import TaskData
from medfm.evaluate.tasks.ecg import CinC2017Rhythm
from medfm.evaluate.tasks.icu import PhysioNet2012Mortality
from medfm.evaluate.timeseries_backbones import (
    SeriesBackbone,
    SignalBackbone,
    carry_forward,
    fit_length,
    timeseries_backbone,
)
from medfm.models import timeseries  # noqa: F401  (registers the encoders)
from medfm.models.encoders import create_encoder, list_encoders


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_every_parameter_learns(model: torch.nn.Module, x: torch.Tensor) -> None:
    model(x).square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_registered():
    assert {"ecg_cnn", "icu_gru", "icu_transformer"} <= set(list_encoders())


def test_ecg_cnn_shapes_and_size():
    torch.manual_seed(0)
    model = create_encoder("ecg_cnn")
    assert model.embed_dim == 128 and 100_000 <= n_params(model) <= 300_000
    for length in (300, 451):  # any length: global average pooling
        assert model(torch.randn(2, 1, length)).shape == (2, 128)
    twelve_lead = create_encoder("ecg_cnn", in_chans=12)
    assert twelve_lead(torch.randn(2, 12, 300)).shape == (2, 128)
    assert_every_parameter_learns(model, torch.randn(3, 1, 600))


def test_icu_gru_is_the_last_hidden_state():
    torch.manual_seed(0)
    model = create_encoder("icu_gru", in_features=5).eval()
    assert model.embed_dim == 64
    # Two GRU layers: 3 gates x (input weights + hidden weights + 2 biases).
    assert n_params(model) == 3 * (64 * 10 + 64 * 64 + 2 * 64) + 3 * (64 * 64 + 64 * 64 + 2 * 64)
    x = torch.randn(3, 24, 10)
    features = model(x)
    outputs, _ = model.gru(x)
    assert features.shape == (3, 64)
    torch.testing.assert_close(features, outputs[:, -1])
    assert_every_parameter_learns(model.train(), x)


def test_icu_gru_refuses_bad_widths():
    with pytest.raises(ConfigError, match="in_features"):
        create_encoder("icu_gru")
    with pytest.raises(ConfigError, match="expects 10 inputs"):
        create_encoder("icu_gru", in_features=5)(torch.randn(1, 4, 5))


def test_icu_transformer_pools_hours_and_depends_on_their_order():
    torch.manual_seed(0)
    model = create_encoder("icu_transformer", in_features=5).eval()
    x = torch.randn(3, 24, 10)
    features = model(x)
    assert features.shape == (3, 64) and model.embed_dim == 64
    assert 20_000 <= n_params(model) <= 120_000
    # Learned hour positions: reversing the hours changes the feature (a plain mean would not).
    assert not torch.allclose(model(x.flip(1)), features, atol=1e-4)
    assert model(torch.randn(2, 48, 10)).shape == (2, 64)  # any length up to max_hours
    assert_every_parameter_learns(model.train(), x)


def test_icu_transformer_refuses_bad_inputs():
    with pytest.raises(ConfigError, match="in_features"):
        create_encoder("icu_transformer")
    model = create_encoder("icu_transformer", in_features=5, max_hours=8)
    with pytest.raises(ConfigError, match="expects 10 inputs"):
        model(torch.randn(1, 4, 5))
    with pytest.raises(ConfigError, match="at most 8 hours"):
        model(torch.randn(1, 9, 10))


def test_signal_backbone_standardises_and_fits_the_length():
    torch.manual_seed(0)
    backbone = SignalBackbone(create_encoder("ecg_cnn"), length=1000)
    long = (3 + 2 * np.sin(np.arange(1500) / 10)).astype(np.float32)[None]
    short = np.arange(400, dtype=np.float32)[None]
    collated = backbone.collate({"signal": [long, short]}, [0, 1])
    batch = collated["signal"]
    assert batch.shape == (2, 1, 1000)
    whole = (long - long.mean()) / long.std()
    np.testing.assert_allclose(batch[0, 0].numpy(), whole[0, 250:1250], atol=1e-5)  # centre crop
    assert (batch[1, 0, :300] == 0).all() and (batch[1, 0, 700:] == 0).all()  # padded evenly
    np.testing.assert_allclose(batch[1, 0, 300:700].mean().item(), 0, atol=1e-5)
    assert backbone(collated).shape == (2, backbone.embed_dim) == (2, 128)


def test_fit_length_odd_sizes():
    x = np.arange(5, dtype=np.float32)[None]
    np.testing.assert_array_equal(fit_length(x, 3), [[1, 2, 3]])
    np.testing.assert_array_equal(fit_length(x, 8), [[0, 0, 1, 2, 3, 4, 0, 0]])


def test_carry_forward():
    values = torch.tensor([[[1.0], [0.0], [3.0], [0.0]], [[0.0], [2.0], [0.0], [0.0]]])
    mask = torch.tensor([[[True], [False], [True], [False]], [[False], [True], [False], [False]]])
    filled = carry_forward(values, mask)
    assert filled[..., 0].tolist() == [[1, 1, 3, 3], [0, 2, 2, 2]]


def test_series_backbone_scales_fills_and_appends_the_mask():
    nan = np.nan
    series = [
        np.array([[1.0, nan, 5.0], [nan, nan, 5.0], [3.0, nan, 5.0]], dtype=np.float32),
        np.array([[nan, nan, 5.0], [5.0, nan, 5.0], [nan, nan, 5.0]], dtype=np.float32),
    ]
    inputs = {"series": series, "mask": [~np.isnan(s) for s in series]}
    backbone = SeriesBackbone(create_encoder("icu_gru", in_features=3))
    with pytest.raises(ConfigError, match="fit"):
        backbone.collate(inputs, [0])
    backbone.fit(inputs)
    # Variable 0 observed as 1, 3, 5: mean 3, std sqrt(8/3); variable 1 never (0, 1); variable 2 constant.
    np.testing.assert_allclose(backbone.mean.numpy(), [3, 0, 5])
    np.testing.assert_allclose(backbone.std.numpy(), [np.sqrt(8 / 3), 1, 1], rtol=1e-6)
    collated = backbone.collate(inputs, [0, 1])
    batch = collated["series"]
    assert batch.shape == (2, 3, 6)
    z = 2 / np.sqrt(8 / 3)
    np.testing.assert_allclose(batch[0, :, 0].numpy(), [-z, -z, 0], atol=1e-6)  # carried forward
    np.testing.assert_allclose(batch[1, :, 0].numpy(), [0, z, z], atol=1e-6)  # 0 before the first value
    assert (batch[:, :, 1:3] == 0).all()
    np.testing.assert_array_equal(batch[0, :, 3:].numpy(), inputs["mask"][0])
    assert backbone(collated).shape == (2, backbone.embed_dim) == (2, 64)


def test_series_backbone_clips_implausible_values():
    series = [np.array([[0.0], [1.0], [1e6]], dtype=np.float32)] + [np.zeros((3, 1), np.float32)] * 100
    inputs = {"series": series, "mask": [np.ones((3, 1), bool)] * 101}
    backbone = SeriesBackbone(create_encoder("icu_gru", in_features=1))
    backbone.fit(inputs)
    assert backbone.collate(inputs, [0])["series"][0, 2, 0] == 10


def task_data(info, inputs: dict[str, list]) -> TaskData:
    n = len(next(iter(inputs.values())))
    ids = np.array([f"s{i}" for i in range(n)], dtype=object)
    return TaskData("toy", info, info.classes, inputs, np.zeros(n, np.int64), ids, ids, np.full(n, "train"))


def test_timeseries_backbone_sizes_the_encoder_for_the_task():
    torch.manual_seed(0)
    ecg = task_data(CinC2017Rhythm.info, {"signal": [np.zeros((1, 500), np.float32)] * 2})
    signal_backbone = timeseries_backbone("ecg_cnn", ecg)
    assert isinstance(signal_backbone, SignalBackbone) and signal_backbone.encoder.in_chans == 1
    series = [np.ones((48, 37), np.float32)] * 2
    icu = task_data(PhysioNet2012Mortality.info, {"series": series, "mask": [np.ones((48, 37), bool)] * 2})
    series_backbone = timeseries_backbone("icu_gru", icu)
    assert isinstance(series_backbone, SeriesBackbone) and series_backbone.encoder.in_features == 37
    series_backbone.fit(icu.inputs)
    assert series_backbone(series_backbone.collate(icu.inputs, [0, 1])).shape == (2, 64)
    with pytest.raises(ConfigError, match="names no encoder"):
        timeseries_backbone(None, icu)
