"""Sharing modes on a CPU machine: caps arithmetic, per-server settings, MIG discovery against
NVML's API shapes, and MPS control sequencing against a stand-in control program."""

import os
import subprocess
import time
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gpushare.config import parse_config
from gpushare.config_file import read_config_file
from gpushare.errors import ConfigError, RunFailure
from gpushare.serving import mig
from gpushare.serving.mig import H100_80GB_PROFILES, memory_fraction, mig_instances, mig_profiles, profile_caps, table_profiles
from gpushare.serving.mps import MpsDaemon
from gpushare.serving.sharing.placement import mps_memory_limit, place_servers
from helpers import SSE_SERVER, alive, cli, free_port, run_folder, summary, write_config



def test_profile_caps_follow_the_profile_name():
    caps = profile_caps("3g.40gb", 79.2)
    assert caps.memory_gib == pytest.approx(39.6) and caps.sm_percent == 43
    assert profile_caps("4g.40gb", 79.2).sm_percent == 57
    assert profile_caps("7g.80gb", 79.2) == profile_caps("7g.80gb", 79.2).__class__(79.2, 100)
    assert profile_caps("1g.10gb", 80).sm_percent == 14 and profile_caps("1g.10gb", 80).memory_gib == 10
    with pytest.raises(ConfigError, match="unknown profile '5g.50gb'"):
        profile_caps("5g.50gb", 80)


@given(st.sampled_from(H100_80GB_PROFILES), st.floats(20.0, 200.0), st.floats(0.0, 5.0))
@example("1g.10gb", 20.0, 0.2)  # 2.3 GiB of budget: the floor of 1150.0000000000002 steps back to 0.115 exactly
def test_memory_fraction_keeps_the_budget_under_the_cap(profile, total, headroom):
    cap = profile_caps(profile, total).memory_gib
    try:
        fraction = memory_fraction(cap, total, headroom)
    except ConfigError:
        assert cap - headroom < total * 1e-4  # refused only when (almost) nothing is left
    else:
        assert 0 < fraction * total <= cap - headroom


def test_memory_fraction_refuses_impossible_caps():
    with pytest.raises(ConfigError, match="more than the GPU's 79.2 GiB"):
        memory_fraction(90, 79.2, 3)
    with pytest.raises(ConfigError, match="leaves nothing"):
        memory_fraction(2, 79.2, 3)
    assert mps_memory_limit(36) == "0=36G" and mps_memory_limit(2.5) == "0=2560M"


def emulation(mps: bool, **server_b):
    return parse_config({
        "sharing": {"mode": "mig_emulation", "mps": mps},
        "servers": [{"port": 8000, "memory_gib": 36}, {"port": 8001, **server_b}],
    })


def test_mig_emulation_places_caps_per_server():
    placements = place_servers(emulation(True, mig_profile="4g.40gb"), gpu_memory_gib=79.2)
    a, b = placements
    assert a.server.env["CUDA_VISIBLE_DEVICES"] == "0"
    assert a.server.gpu_memory_utilization == pytest.approx((36 - 3) / 79.2, abs=1e-4)
    assert a.server.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=36G"
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" not in a.server.env
    assert b.server.env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "57"
    assert b.describe()["memory_cap_gib"] == pytest.approx(39.6) and b.describe()["sm_percent"] == 57

    memory_only = place_servers(emulation(False, memory_gib=20), gpu_memory_gib=79.2)
    assert all("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT" not in p.server.env for p in memory_only)
    assert memory_only[1].server.gpu_memory_utilization == pytest.approx(17 / 79.2, abs=1e-4)


@pytest.mark.parametrize("raw, message", [
    ({"sharing": {"mode": "mig_emulation"}, "servers": [{"port": 1, "memory_gib": 9, "sm_percent": 50}]},
     "servers.0: a compute cap needs MPS (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE); set sharing.mps: true"),
    ({"sharing": {"mode": "mig_emulation"}, "servers": [{"port": 1}]},
     "servers.0: mig_emulation needs a memory cap"),
    ({"sharing": {"mode": "timeslice"}, "servers": [{"port": 1, "memory_gib": 9}]},
     "servers.0: memory_gib, sm_percent and mig_profile need mode mps or mig_emulation"),
    ({"sharing": {"mode": "mps"}, "servers": [{"port": 1, "mig_profile": "3g.40gb", "memory_gib": 3}]},
     "servers.0: Value error, give either mig_profile or memory_gib/sm_percent, not both"),
])
def test_sharing_rules_are_one_line_errors(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert message.replace("Value error, ", "") in str(err.value)


def test_caps_without_a_gpu_are_refused():
    with pytest.raises(ConfigError, match="needs the GPU's memory size, and NVML is not available"):
        place_servers(emulation(True, memory_gib=9), gpu_memory_gib=None)


class FakeNvml:
    """The NVML calls gpushare uses for MIG, shaped like pynvml's."""

    NVML_DEVICE_MIG_ENABLE = 1

    class NVMLError(Exception):
        pass

    def __init__(self, mig_mode, instances):
        self.mig_mode, self.instances = mig_mode, instances

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetMigMode(self, handle):
        if self.mig_mode is None:
            raise self.NVMLError("Not Supported")
        return (self.mig_mode, self.mig_mode)

    def nvmlDeviceGetMaxMigDeviceCount(self, handle):
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, i):
        if i >= len(self.instances) or self.instances[i] is None:
            raise self.NVMLError("Not Found")
        return ("mig", i)

    def nvmlDeviceGetUUID(self, handle):
        return self.instances[handle[1]][0]

    def nvmlDeviceGetName(self, handle):
        return f"NVIDIA H100 80GB HBM3 MIG {self.instances[handle[1]][1]}"

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=self.instances[handle[1]][2] * 2**20)


def test_mig_discovery_and_assignment():
    nvml = FakeNvml(1, [("MIG-aaa", "3g.40gb", 40192), None, ("MIG-bbb", "4g.40gb", 40192)])
    found = mig_instances(nvml, 0)
    assert [(m.index, m.uuid) for m in found] == [(0, "MIG-aaa"), (2, "MIG-bbb")]
    config = parse_config({"sharing": {"mode": "mig"},
                           "servers": [{"port": 1, "mig_device": "MIG-bbb"}, {"port": 2, "mig_device": "0"}]})
    a, b = place_servers(config, gpu_memory_gib=79.2, mig=found)
    assert a.server.env["CUDA_VISIBLE_DEVICES"] == "MIG-bbb" and b.server.env["CUDA_VISIBLE_DEVICES"] == "MIG-aaa"
    with pytest.raises(ConfigError, match="only 2 MIG instances for 3 servers"):
        place_servers(parse_config({"sharing": {"mode": "mig"}, "servers": [{"port": p} for p in (1, 2, 3)]}),
                      79.2, found)


def test_mig_disabled_or_unsupported_is_one_line():
    with pytest.raises(ConfigError, match="MIG is disabled on GPU 0; gpushare does not change MIG modes"):
        mig_instances(FakeNvml(0, []), 0)
    with pytest.raises(ConfigError, match="not MIG-capable|needs a MIG-capable GPU"):
        mig_instances(FakeNvml(None, []), 0)



class FakeGpu(FakeNvml):
    """A whole GPU by NVML's name and memory; `driver` are the profile names the driver lists
    (None: it lists none, as on a GPU that is not MIG-capable)."""

    NVML_GPU_INSTANCE_PROFILE_COUNT = 18

    def __init__(self, name, memory_mib, driver=None):
        super().__init__(0, [])
        self.name, self.memory_mib, self.driver = name, memory_mib, driver or []

    def nvmlDeviceGetName(self, handle):
        return self.name

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=self.memory_mib * 2**20)

    def nvmlDeviceGetGpuInstanceProfileInfo(self, handle, profile_id):
        if profile_id >= len(self.driver):
            raise self.NVMLError("Not Supported")
        return SimpleNamespace(name=self.driver[profile_id], sliceCount=0)


H200_MIB = 143_771  # NVML's total on an H200


def placed(gpu, profile, memory_mib=H200_MIB):
    return place_servers(emulation(True, mig_profile=profile), memory_mib / 1024,
                         profiles=mig_profiles(gpu, gpu.nvmlDeviceGetHandleByIndex(0)))[1]


def test_an_h200_takes_its_own_profile_names_and_refuses_others_in_one_line():
    h200 = FakeGpu("NVIDIA H200", H200_MIB)
    b = placed(h200, "3g.71gb")
    assert b.describe()["memory_cap_gib"] == 70.2 and b.describe()["sm_percent"] == 43
    assert placed(h200, "4g.71gb").describe()["sm_percent"] == 57
    assert placed(h200, "7g.141gb").caps.memory_gib == 140.4  # not 141: the name rounds up
    with pytest.raises(ConfigError) as err:
        placed(h200, "3g.40gb")
    assert str(err.value) == ("servers.1.mig_profile: 3g.40gb is not a MIG profile of the NVIDIA H200 "
                              "(its profiles: 1g.18gb, 1g.35gb, 2g.35gb, 3g.71gb, 4g.71gb, 7g.141gb)")


@pytest.mark.parametrize("path", ["configs/h200/sharegpt_mig_emulation.yaml", "configs/h200/synthetic_mig_emulation.yaml"])
def test_h200_configs_cap_as_their_h100_named_runs_did(path):
    """Their runs used 3g.40gb + 4g.40gb, scaled to the H200: summary.json recorded these."""
    root = Path(__file__).resolve().parent.parent
    config = parse_config(read_config_file(root / path))
    h200 = FakeGpu("NVIDIA H200", H200_MIB)
    placements = place_servers(config, H200_MIB / 1024, profiles=mig_profiles(h200, ("gpu", 0)))
    assert [(p.describe()["memory_cap_gib"], p.describe()["sm_percent"], p.describe()["gpu_memory_utilization"])
            for p in placements] == [(70.2, 43, 0.4786), (70.2, 57, 0.4786)]


def test_an_a30_has_four_slices():
    a30 = mig_profiles(FakeGpu("NVIDIA A30", 24_576), ("gpu", 0))
    caps = [profile_caps(p, 24.0, a30) for p in ("1g.6gb", "2g.12gb", "4g.24gb")]
    assert [(c.memory_gib, c.sm_percent) for c in caps] == [(6.0, 25), (12.0, 50), (24.0, 100)]


@pytest.mark.parametrize("name, memory_mib, first, last", [
    ("NVIDIA A100-PCIE-40GB", 40_960, "1g.5gb", "7g.40gb"),
    ("NVIDIA A100-SXM4-80GB", 81_920, "1g.10gb", "7g.80gb"),
    ("NVIDIA H100 80GB HBM3", 81_559, "1g.10gb", "7g.80gb"),
    ("NVIDIA H100 NVL", 95_830, "1g.12gb", "7g.94gb"),
    ("NVIDIA B200", 183_359, "1g.23gb", "7g.180gb"),
])
def test_the_table_knows_a_model_by_name_and_memory(name, memory_mib, first, last):
    table = table_profiles(name, memory_mib / 1024)
    assert (table[0].name, table[-1].name, table[-1].gpu_slices) == (first, last, 7)


def test_an_unknown_gpu_or_no_nvml_keeps_the_h100_names_scaled(monkeypatch):
    assert mig_profiles(FakeGpu("NVIDIA L40S", 46_068), ("gpu", 0)) is None
    assert table_profiles("NVIDIA GH200 480GB", 95.0) == ()  # not an H200
    old = place_servers(emulation(True, mig_profile="3g.40gb"), H200_MIB / 1024, profiles=None)[1]
    assert (old.caps.memory_gib, old.caps.sm_percent) == (70.2, 43)
    with pytest.raises(ConfigError, match=r"servers.1.mig_profile: unknown profile '3g.71gb' \(allowed: 1g.10gb, "):
        place_servers(emulation(True, mig_profile="3g.71gb"), H200_MIB / 1024)

    class NoDriver:
        def nvmlInit(self):
            raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", NoDriver())
    assert mig.gpu_profiles(0) is None


def test_the_drivers_profiles_win_over_the_table(monkeypatch):
    driver = [b"MIG 1g.18gb", "MIG 7g.144gb", "MIG 1g.18gb+me", "MIG 3g.72gb"]
    gpu = FakeGpu("NVIDIA H200", 147_456, driver)
    b = placed(gpu, "3g.72gb", 147_456)
    assert (b.caps.memory_gib, b.caps.sm_percent) == (72.0, 43)
    with pytest.raises(ConfigError, match=r"3g.71gb is not a MIG profile of the NVIDIA H200 \(its profiles: 1g.18gb, 3g.72gb, 7g.144gb\)"):
        placed(gpu, "3g.71gb", 147_456)
    gpu.nvmlInit = gpu.nvmlShutdown = lambda: None
    monkeypatch.setitem(sys.modules, "pynvml", gpu)
    assert [p.name for p in mig.gpu_profiles(0).profiles] == ["1g.18gb", "3g.72gb", "7g.144gb"]



def test_mps_daemon_lifecycle(standin, tmp_path):
    with MpsDaemon(tmp_path, 0, say=lambda m: None) as daemon:
        pipe = daemon.pipe_directory
        assert oct(pipe.stat().st_mode)[-3:] == "700"
        assert daemon.client_env == {"CUDA_MPS_PIPE_DIRECTORY": str(pipe)}
        pid = daemon.process.pid
        assert alive(pid)
    assert not alive(pid) and not pipe.exists()
    lines = standin.read_text().splitlines()
    assert f"daemon start log_dir={tmp_path / 'mps-log'} gpus=0" in lines
    assert lines[-2:] == ["quit clients_alive=0", "daemon exit"]


def test_mps_daemon_that_fails_reports_its_log(standin, tmp_path, monkeypatch):
    monkeypatch.setenv("MPS_STANDIN_FAIL", "1")
    with pytest.raises(RunFailure, match="did not start; last log lines: control.log: fatal: no CUDA-capable device"):
        MpsDaemon(tmp_path, 0, say=lambda m: None).__enter__()


def test_an_mps_daemon_we_did_not_start_is_neither_used_nor_stopped(standin, tmp_path):
    other = MpsDaemon(tmp_path / "other", 0, say=lambda m: None, gpu_uuid="GPU-a")
    (tmp_path / "other").mkdir()
    with other:
        from gpushare import environment

        assert other.process.pid in environment.mps()["control_daemons"]  # what doctor shows
        with pytest.raises(ConfigError, match=r"already serves GPU 0 \(pid \d+\); gpushare neither uses nor stops it"):
            MpsDaemon(tmp_path, 0, say=lambda m: None, gpu_uuid="GPU-a").__enter__()  # the same GPU, as NVML names it
        with MpsDaemon(tmp_path, 0, existing_pipe_directory=other.pipe_directory, say=lambda m: None) as borrowed:
            assert borrowed.client_env["CUDA_MPS_PIPE_DIRECTORY"] == str(other.pipe_directory)
        assert alive(other.process.pid)  # left running
        assert not any(line.startswith("quit") for line in standin.read_text().splitlines())


def test_one_mps_daemon_per_gpu_side_by_side(standin, tmp_path, monkeypatch):
    """Scenarios on two GPUs each run their own daemon, each seeing its GPU only; a daemon
    started without CUDA_VISIBLE_DEVICES (it serves every GPU) blocks both."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with MpsDaemon(tmp_path / "a", 0, say=lambda m: None) as first, \
            MpsDaemon(tmp_path / "b", 1, say=lambda m: None) as second:
        assert first.pipe_directory != second.pipe_directory
        assert alive(first.process.pid) and alive(second.process.pid)
    starts = [line for line in standin.read_text().splitlines() if line.startswith("daemon start")]
    assert [line.split()[-1] for line in starts] == ["gpus=0", "gpus=1"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for name, visible, blocked, free in (("every", None, [(0, None), (1, None)], []),
                                         ("by-uuid", "GPU-a", [(3, "GPU-a")], [(3, "GPU-b"), (0, None)])):
        pipe = tmp_path / name
        pipe.mkdir()
        env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(pipe),
               **({"CUDA_VISIBLE_DEVICES": visible} if visible else {})}
        foreign = subprocess.Popen(["nvidia-cuda-mps-control", "-f"], env=env)
        try:
            while not (pipe / "control").exists():
                time.sleep(0.05)
            for gpu, uuid in blocked:
                with pytest.raises(ConfigError, match=f"already serves GPU {gpu} \\(pid {foreign.pid}\\)"):
                    MpsDaemon(tmp_path / "a", gpu, say=lambda m: None, gpu_uuid=uuid).__enter__()
            for gpu, uuid in free:
                with MpsDaemon(tmp_path / "a", gpu, say=lambda m: None, gpu_uuid=uuid) as ours:
                    assert alive(ours.process.pid)
        finally:
            (pipe / "quit").write_text("")
            foreign.wait(10)


def test_mps_run_stops_servers_before_quitting_the_daemon(standin, tmp_path):
    ports = [free_port(), free_port()]
    cfg = write_config(
        tmp_path / "mps.yaml", scenario="mps",
        sharing={"mode": "mps"},
        servers=[{"name": f"s{i}", "command": SSE_SERVER, "port": p, "ready_timeout_s": 30} for i, p in enumerate(ports)],
        workload={"kind": "synthetic", "input_tokens": 8, "output_tokens": 4},
        load={"concurrency": 2, "n_requests": 6, "warmup_requests": 0},
        out=str(tmp_path / "runs"),
    )
    proc = cli("run", "--config", str(cfg), env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    doc = summary(run_folder(tmp_path / "runs"))
    assert doc["completed"] == 6 and doc["mps"]["started_by_gpushare"]
    assert set(doc["per_endpoint"]) == {"s0", "s1"}
    lines = standin.read_text().splitlines()
    assert "quit clients_alive=0" in lines and lines[-1] == "daemon exit"
    assert not alive(doc["mps"]["control_pid"])
    assert (run_folder(tmp_path / "runs") / "mps-log").is_dir()


def test_interrupted_mps_run_stops_servers_then_the_daemon(standin, tmp_path):
    import signal
    import subprocess
    import time

    cfg = write_config(
        tmp_path / "mps.yaml", scenario="mpsint",
        sharing={"mode": "mps"},
        servers=[{"name": "s0", "command": [*SSE_SERVER, "--token-delay", "0.2"], "port": free_port(),
                  "ready_timeout_s": 30}],
        workload={"kind": "synthetic", "input_tokens": 8, "output_tokens": 20},
        load={"concurrency": 2, "n_requests": 500, "warmup_requests": 0},
        out=str(tmp_path / "runs"),
    )
    proc = subprocess.Popen([sys.executable, "-m", "gpushare.cli", "run", "--config", str(cfg)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((tmp_path / "runs").glob("*/server-0.log")):
        time.sleep(0.2)
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    doc = summary(run_folder(tmp_path / "runs"))
    assert doc["complete"] is False and doc["error"] == "interrupted by SIGINT"
    lines = standin.read_text().splitlines()
    assert "quit clients_alive=0" in lines and lines[-1] == "daemon exit"
    assert not alive(doc["mps"]["control_pid"]) and not alive(doc["servers"][0]["pid"])


class FakeNvmlSampling(FakeNvml):
    """Adds the sampling calls; MIG instances answer memory only, as NVML's do."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetUUID(self, handle):
        return "GPU-0" if handle[0] == "gpu" else super().nvmlDeviceGetUUID(handle)

    def nvmlDeviceGetMemoryInfo(self, handle):
        if handle[0] == "gpu":
            return SimpleNamespace(total=80 * 2**30, used=50 * 2**30)
        return SimpleNamespace(total=self.instances[handle[1]][2] * 2**20, used=7 * 2**30)

    def _gpu_only(self, handle, value):
        if handle[0] != "gpu":
            raise self.NVMLError("Not Supported")
        return value

    def nvmlDeviceGetUtilizationRates(self, handle):
        return self._gpu_only(handle, SimpleNamespace(gpu=97, memory=40))

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._gpu_only(handle, 450_000)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return self._gpu_only(handle, 1_000_000)

    def nvmlDeviceGetClockInfo(self, handle, kind):
        return self._gpu_only(handle, 1980)

    def nvmlDeviceGetTemperature(self, handle, kind):
        return self._gpu_only(handle, 40)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self._gpu_only(handle, 0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [SimpleNamespace(pid=os.getpid(), usedGpuMemory=3 * 2**30)] if handle[0] == "gpu" else []

    def nvmlShutdown(self):
        pass


def test_monitor_samples_gpus_and_mig_instances(tmp_path, monkeypatch):
    import csv

    import gpushare.measure.monitor as monitor

    nvml = FakeNvmlSampling(1, [("MIG-aaa", "3g.40gb", 40192)])
    monkeypatch.setattr(monitor, "_nvml", lambda: nvml)
    with monitor.GpuMonitor(tmp_path / "gpu.csv", 0.01, say=lambda m: None) as mon:
        deadline = time.monotonic() + 5
        while mon.samples < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    rows = list(csv.DictReader(open(tmp_path / "gpu.csv")))
    gpu = [r for r in rows if r["gpu"] == "0"]
    mig = [r for r in rows if r["gpu"] == "0:0"]
    assert len(gpu) >= 3 and len(mig) == len(gpu)
    assert gpu[0]["power_w"] == "450.0" and gpu[0]["energy_j"] == "1000.0" and gpu[0]["mem_used_mib"] == "51200"
    assert gpu[0]["processes"] == f"{os.getpid()}:{os.getpgid(0)}:3072"
    assert mig[0]["uuid"] == "MIG-aaa" and mig[0]["mem_used_mib"] == "7168" and mig[0]["gpu_util_pct"] == ""


def test_the_monitor_samples_only_the_runs_gpus(tmp_path, monkeypatch):
    """Two runs on one machine, each on its own GPU: neither's gpu.csv (its energy, power)
    may hold the other's GPU."""
    import csv

    import gpushare.measure.monitor as monitor

    class TwoGpus(FakeNvmlSampling):
        def nvmlDeviceGetCount(self):
            return 2

    monkeypatch.setattr(monitor, "_nvml", lambda: TwoGpus(0, []))
    for gpus, expected in (([1], {"1"}), (None, {"0", "1"})):
        path = tmp_path / f"gpu-{gpus}.csv"
        with monitor.GpuMonitor(path, 0.01, say=lambda m: None, gpus=gpus) as mon:
            deadline = time.monotonic() + 5
            while mon.samples < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
        assert {r["gpu"] for r in csv.DictReader(open(path))} == expected
