"""Registries: one line for a name registered twice or not registered, and the config's
accepted values are exactly the registered ones."""

from typing import Literal

import pytest

from gpushare.config import StrictModel
from gpushare.errors import ConfigError
from gpushare.registry import Registry


def test_a_name_registered_twice_is_one_line_naming_both_classes():
    registry: Registry[object] = Registry("engine")

    @registry.register("vllm")
    class First:
        pass

    with pytest.raises(ConfigError) as err:
        @registry.register("vllm")
        class Second:
            pass
    assert str(err.value).splitlines() == [
        "engine: 'vllm' is registered twice "
        "(test_a_name_registered_twice_is_one_line_naming_both_classes.<locals>.First and "
        "test_a_name_registered_twice_is_one_line_naming_both_classes.<locals>.Second)"]
    assert registry["vllm"] is First


def test_an_unknown_name_is_one_line_naming_the_key_and_the_names_allowed():
    registry: Registry[object] = Registry("kind")
    registry.register("synthetic")(type("Synthetic", (), {}))
    registry.register("dataset")(type("Dataset", (), {}))
    with pytest.raises(ConfigError) as err:
        registry["sharegtp"]
    assert str(err.value) == "kind: 'sharegtp' is not one of synthetic, dataset"
    assert err.value.exit_code == 2
    assert "dataset" in registry and "sharegtp" not in registry and registry.names == ("synthetic", "dataset")


def test_a_config_type_registered_under_another_name_than_its_discriminator_is_refused():
    registry: Registry[StrictModel] = Registry("kind")

    class Poisson(StrictModel):
        kind: Literal["poisson"] = "poisson"

    with pytest.raises(ConfigError, match="^kind: .*Poisson is registered as 'gamma' but its kind field allows 'poisson'$"):
        registry.register("gamma")(Poisson)
