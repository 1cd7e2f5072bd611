"""Registries: one line for a name registered twice or not registered, and the config's
accepted values are exactly the registered ones."""

import importlib
from typing import Literal, get_args

import pytest

from gpushare.cli.app import matrix_executors
from gpushare.cli.matrix import matrix_parser
from gpushare.config import ScenarioConfig, ServerConfig, SharingConfig, TenantConfig
from gpushare.errors import ConfigError
from gpushare.experiment.matrix import Executor
from gpushare.load.workloads import WORKLOADS, Workload
from gpushare.registry import Registry, import_modules
from gpushare.serving.engines import ENGINES, Engine
from gpushare.serving.sharing import SHARING_MODES, SharingMode
from gpushare.strict import StrictModel


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


def union_members(annotation) -> set[type]:
    """The classes of a (possibly optional, annotated) union field."""
    found: set[type] = set()
    for arg in get_args(annotation) or (annotation,):
        if isinstance(arg, type):
            found.add(arg)
        elif get_args(arg):
            found |= union_members(arg)
    return found - {type(None)}


def test_every_workload_kind_the_config_accepts_is_registered_and_every_registered_kind_is_accepted():
    for field in (ScenarioConfig.model_fields["workload"], TenantConfig.model_fields["workload"]):
        assert union_members(field.annotation) == set(WORKLOADS)
    assert set(WORKLOADS.names) == {"synthetic", "dataset", "sharegpt"}
    for name in WORKLOADS.names:
        cls = WORKLOADS[name]
        assert issubclass(cls, Workload) and get_args(cls.model_fields["kind"].annotation) == (name,)


def test_every_engine_the_config_accepts_is_registered_and_every_registered_engine_is_accepted():
    assert get_args(ServerConfig.model_fields["engine"].annotation) == ENGINES.names
    assert set(ENGINES.names) == {"vllm", "external"}
    assert all(issubclass(cls, Engine) for cls in ENGINES)
    assert [ENGINES[name].launched for name in ("vllm", "external")] == [True, False]


def test_every_sharing_mode_the_config_accepts_is_registered_and_every_registered_mode_is_accepted():
    assert get_args(SharingConfig.model_fields["mode"].annotation) == SHARING_MODES.names
    assert SHARING_MODES.names == ("baseline", "mps", "timeslice", "mig_emulation", "mig")  # the order errors list
    assert all(issubclass(cls, SharingMode) for cls in SHARING_MODES)
    assert [SharingConfig(mode=name).implementation for name in SHARING_MODES.names] == list(SHARING_MODES)
    under_mps = {name: SharingConfig(mode=name, mps=True).uses_mps for name in SHARING_MODES.names}
    assert under_mps == {"baseline": False, "mps": True, "timeslice": False, "mig_emulation": True, "mig": False}
    assert not SharingConfig(mode="mig_emulation").uses_mps


def test_the_modules_named_first_are_imported_in_that_order_and_the_others_by_name(monkeypatch):
    imported: list[str] = []
    import_module = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name: imported.append(name) or import_module(name))
    import_modules("gpushare.serving.sharing.modes", first=("mps", "baseline"))
    assert [name.rpartition(".")[2] for name in imported[1:]] == ["mps", "baseline", "mig", "mig_emulation", "timeslice"]


def test_every_executor_declares_the_flag_that_chooses_it_and_the_matrix_parser_takes_it():
    executors = matrix_executors()
    assert executors.names == ("here", "gpus", "ray")
    assert all(issubclass(cls, Executor) for cls in executors)
    flags = matrix_parser().parse(["--configs", "a.yaml", "--gpus", "0,1", "--ray", "local"])
    assert [name for name in executors.names if executors[name].chosen(flags)] == ["gpus", "ray"]
    assert [executors[name].flag for name in executors.names] == [None, "--gpus", "--ray"]
