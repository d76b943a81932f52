"""Building streams from real tasks: relabelling, scenario checks with clear messages, subject splits."""

import numpy as np
import pytest
from PIL import Image

from medfm.continual.config import ContinualConfig, ExperienceConfig
from medfm.continual.stream import build_stream
from medfm.errors import ConfigError


@pytest.fixture(scope="module")
def folder_task(tmp_path_factory):
    """A hospital's own image folder: 120 grey 28 px images labelled NORMAL / PNEUMONIA / EFFUSION."""
    root = tmp_path_factory.mktemp("site")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for i in range(120):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        rows.append(f"images/{i}.png,{('NORMAL', 'PNEUMONIA', 'EFFUSION')[i % 3]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def config(scenario, *experiences, **overrides) -> ContinualConfig:
    return ContinualConfig(scenario=scenario, experiences=list(experiences), **overrides)


def test_a_shared_head_refuses_another_label_space(data_root, folder_task):
    stream = config(
        "domain",
        ExperienceConfig(task="pneumoniamnist"),
        ExperienceConfig(task="image_folder", root=str(folder_task)),
    )
    with pytest.raises(ConfigError) as caught:
        build_stream(stream)
    message = str(caught.value)
    assert "experience image_folder has label space ['EFFUSION', 'NORMAL', 'PNEUMONIA']" in message
    assert "experience pneumoniamnist has ['normal', 'pneumonia']" in message
    assert "shares one head" in message


def test_a_shared_head_refuses_another_input_shape(data_root):
    stream = config(
        "domain",
        ExperienceConfig(task="pneumoniamnist"),
        ExperienceConfig(task="cinc2017_rhythm", limit=120),
        signal_length=3000,
    )
    with pytest.raises(
        ConfigError,
        match=r"gives inputs signal \[1, 3000\] but experience pneumoniamnist gives image \[1, 32, 32\]",
    ):
        build_stream(stream)


def test_a_class_incremental_stream_refuses_another_image_size(data_root):
    stream = config(
        "class",
        ExperienceConfig(task="pneumoniamnist", classes=["normal"]),
        ExperienceConfig(task="pneumoniamnist", classes=["pneumonia"], image_size=28),
        metric="accuracy",
    )
    with pytest.raises(
        ConfigError, match=r"image \[1, 28, 28\] but .* image \[1, 32, 32\].*set one image_size"
    ):
        build_stream(stream)


def test_class_incremental_experiences_must_bring_new_classes(data_root):
    stream = config(
        "class",
        ExperienceConfig(task="cinc2017_rhythm", classes=["N", "A"]),
        ExperienceConfig(task="cinc2017_rhythm", classes=["A", "O"]),
        metric="accuracy",
    )
    with pytest.raises(ConfigError, match=r"both hold class\(es\) \['A'\]"):
        build_stream(stream)


def test_unknown_classes_and_renames_are_named(data_root):
    with pytest.raises(ConfigError, match=r"classes \['B'\] are not among task cinc2017_rhythm's"):
        build_stream(
            config(
                "class",
                ExperienceConfig(task="cinc2017_rhythm", classes=["N", "B"]),
                ExperienceConfig(task="cinc2017_rhythm", classes=["O"]),
                metric="accuracy",
            )
        )
    with pytest.raises(ConfigError, match=r"cannot rename \['Normal'\]"):
        build_stream(
            config(
                "domain",
                ExperienceConfig(task="pneumoniamnist", rename={"Normal": "n"}),
                ExperienceConfig(task="pneumoniamnist", name="again"),
            )
        )


def test_renamed_classes_join_a_domain_stream(data_root, folder_task):
    stream = build_stream(
        config(
            "domain",
            ExperienceConfig(task="pneumoniamnist"),
            ExperienceConfig(
                task="image_folder",
                root=str(folder_task),
                rename={"NORMAL": "normal", "PNEUMONIA": "pneumonia"},
                classes=["normal", "pneumonia"],
            ),
        )
    )
    site = stream.experiences[1]
    assert list(stream.heads) == ["shared"] and stream.heads["shared"].classes == ("normal", "pneumonia")
    assert (
        site.classes == ("normal", "pneumonia")
        and len(site) + len(site.splits["val"]) + len(site.splits["test"]) == 80
    )
    assert site.input_shapes == stream.experiences[0].input_shapes == {"image": (1, 32, 32)}


def test_a_class_incremental_stream_grows_one_head_and_keeps_subject_splits(data_root):
    stream = build_stream(
        config(
            "class",
            ExperienceConfig(task="cinc2017_rhythm", classes=["N", "A"]),
            ExperienceConfig(task="cinc2017_rhythm", classes=["O"]),
            ExperienceConfig(task="cinc2017_rhythm", classes=["~"]),
            metric="accuracy",
            signal_length=1500,
        )
    )
    assert stream.heads["shared"].classes == ("N", "A", "O", "~")
    assert [sorted(set(e.splits["train"].y.tolist())) for e in stream.experiences] == [[0, 1], [2], [3]]
    trained = {s for e in stream.experiences for s in e.splits["train"].subjects}
    tested = {s for e in stream.experiences for s in e.splits["test"].subjects}
    assert not trained & tested  # no test subject is trained on in any experience
    assert stream.signatures() == {"signal_1x1500": ("signal", (1, 1500))}


def test_an_unknown_task_is_named_before_any_data_is_read(tmp_path):
    stream = config("task", ExperienceConfig(task="pneumoniamnist"), ExperienceConfig(task="pneumonia_mnist"))
    message = r"experience pneumonia_mnist: unknown task .pneumonia_mnist.; did you mean pneumoniamnist"
    with pytest.raises(ConfigError, match=message):
        build_stream(stream)
