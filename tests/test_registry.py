import pytest

from medfm.registry import Registry


def test_register_get_alias_and_wildcards():
    models = Registry("model")

    @models.register("vit_tiny_patch16", aliases=("vit_t",))
    def vit_tiny():
        return "tiny"

    models.register("vit_small_patch16", lambda: "small")
    models.register("resnet18", lambda: "resnet")
    assert models.get("vit_t") is vit_tiny
    assert models.list("vit_*") == ["vit_small_patch16", "vit_tiny_patch16"]
    assert models.list() == ["resnet18", "vit_small_patch16", "vit_tiny_patch16"]
    assert "vit_t" in models and len(models) == 3


def test_unknown_name_suggests_close_matches():
    models = Registry("model")
    models.register("vit_tiny_patch16", object())
    with pytest.raises(KeyError, match="did you mean vit_tiny_patch16"):
        models.get("vit_tiny_patch61")


def test_duplicate_names_are_refused():
    models = Registry("model")
    models.register("a", object(), aliases=("b",))
    with pytest.raises(KeyError, match="already registered"):
        models.register("b", object())
