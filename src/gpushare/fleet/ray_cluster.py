"""`matrix --ray`: each scenario on one whole GPU anywhere in a Ray cluster.

Per scenario the driver reserves a placement group of one bundle (1 GPU, 1 CPU) and starts a
`ScenarioActor` in it. The actor is the scenario's session on that node: it starts the
servers there and runs each cell's load there, in one asyncio process beside them, so no
request crosses the network. The driver asks for one cell at a time; each answer carries the
cell's events and its run folder (packed, unless --shared-out says every node writes into
the driver's --out itself), which the driver unpacks into --out and records in matrix.json
at once. So:

- a node lost mid-scenario costs only the cells it had not handed back: the cell under way
  is indexed as failed, the rest as not run, and a rerun (resume) redoes them; what the lost
  actor kept in its node's folder (the cell under way as it stood, the server logs) is
  fetched back into --out by a task on the same node, which then removes the folder;
- actors die with the driver (Ray ends the actors a driver owns), and a dying actor's servers
  get SIGTERM (core.processes.end_with_parent), so a killed driver leaves nothing running;
- a signal to the driver ends every actor, and the cells under way are indexed as not run.
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
import tarfile
import tempfile
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from .. import environment
from ..core.files import CONSOLE_LOG
from ..errors import ConfigError, GpushareError
from ..experiment.matrix import EXECUTORS, Executor, ScenarioSession
from ..experiment.matrix_book import MatrixBook, ScenarioReport
from ..experiment.matrix_plan import PlannedCell, ScenarioPlan, Todo, cell_on_gpu, on_gpu
from ..experiment.matrix_events import MatrixEvent, decode_event, encode_event
from ..experiment.run.console import say
from ..interrupts import Interrupts
from ..measure.results import assigned_gpu
from ..serving import leftovers
from . import longest_first, wait_for

INSTALL_HINT = "pip install 'gpushare[cluster]'"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray: Ray is not installed; install it with: {INSTALL_HINT}") from None
    return ray


def pack(folder: Path, skip: set[str] = frozenset()) -> bytes:  # type: ignore[assignment]
    """A folder as a gzipped tar (its top-level entries in `skip` left out)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        if folder.exists():
            for entry in sorted(folder.iterdir()):
                if entry.name not in skip:
                    tar.add(entry, arcname=entry.name)
    return buffer.getvalue()


def unpack(data: bytes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(folder, filter="data")


def actor_folder(token: str) -> Path:
    """The private folder of the actor the driver named `token`, on the node it runs on."""
    return Path(tempfile.gettempdir()) / f"{leftovers.RAY_FOLDER_PREFIX}{token}"


def fetch_actor_folder(token: str) -> bytes | None:
    """Run on a lost actor's node (a Ray task in its placement group): the folder it left,
    packed, and then removed; None where there is none (the actor closed it, or the task ran
    on another node because that one is gone)."""
    folder = actor_folder(token)
    if not folder.is_dir():
        return None
    packed = pack(folder, skip={leftovers.RAY_OWNER})
    shutil.rmtree(folder, ignore_errors=True)
    return packed


class ScenarioActor:
    """One scenario's session on the node Ray placed it on (made a Ray actor at run time, so
    that this module imports without Ray). Every call answers; none raises for a fault of
    the run: the driver learns it from the events."""

    def __init__(self) -> None:
        self.events: list[MatrixEvent] = []
        self.session: ScenarioSession | None = None
        self.gpu = 0  # the GPU Ray gave this actor, which every cell is moved to
        self.shared = False
        self.root = Path()
        self.failed_dir: Path | None = None
        self.log: Any = None

    def _collect(self, event: MatrixEvent) -> None:
        self.events.append(event)

    def _answer(self, packed: bytes | None = None) -> dict[str, Any]:
        events, self.events = self.events, []
        return {"events": [encode_event(e) for e in events], "packed": packed}

    def open(self, plan: ScenarioPlan, shared_root: str | None, token: str) -> dict[str, Any]:
        import ray

        where = f"a GPU of {socket.gethostname()}"
        try:  # resolved once: every cell's location, GPU monitor and MPS daemon name this GPU
            gpu_ids = ray.get_gpu_ids()
            gpu = assigned_gpu(str(gpu_ids[0]), environment.gpus()) if gpu_ids else 0
        except GpushareError as err:
            return {**self._answer(), "error": str(err), "where": where}
        where = f"GPU {gpu} of {socket.gethostname()}"
        plan = on_gpu(plan, gpu)
        self.gpu = gpu
        self.shared = shared_root is not None
        self.root = Path(shared_root) if shared_root else actor_folder(token)
        if not self.shared:
            self.root.mkdir(mode=0o700)
            leftovers.mark_ray_folder(self.root)
        log = self.root / plan.config.scenario / CONSOLE_LOG
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log, "a")
        console = Console(file=self.log, width=120)
        self.session = ScenarioSession(plan, self.root, console, Interrupts(), self._collect, where)
        try:
            self.session.__enter__()
        except Exception as err:  # the scenario failed: the driver records its cells, close() ships its logs
            self.failed_dir = self.session.scenario_dir
            self.session = None
            reason = str(err) if isinstance(err, GpushareError) else f"{type(err).__name__}: {err}"
            return {**self._answer(), "error": reason, "where": where}
        return {**self._answer(), "error": None, "where": where}

    def run_cell(self, cell: PlannedCell) -> dict[str, Any]:
        """The driver's cell, run on this actor's GPU."""
        assert self.session is not None
        self.session.run_cell(cell_on_gpu(cell, self.gpu))
        return self._answer(None if self.shared else pack(self.session.scenario_dir / cell.name))

    def drain(self) -> None:
        assert self.session is not None
        self.session.drain()

    def close(self, cells: list[str]) -> dict[str, Any]:
        """Stop the servers; hand back the scenario's own files (server logs, console)."""
        session, self.session = self.session, None
        if session is not None:
            session.__exit__(None, None, None)
        if self.log is not None:
            self.log.close()
        folder = session.scenario_dir if session is not None else self.failed_dir
        packed = None if self.shared or folder is None else pack(folder, skip=set(cells))
        if not self.shared:
            shutil.rmtree(self.root, ignore_errors=True)
        return self._answer(packed)


LOCAL_TOKEN_FILES = [Path.home() / ".ray" / "auth_token", Path.home() / ".ray"]
"""Where a local Ray cluster with token authentication (the default of Ray 2.60) writes its
token, file before folder."""


def preflight(address: str) -> None:
    """Before the matrix's folder exists: Ray is installed, and a HOST:PORT head answers. Ray
    itself retries a head that is not there for minutes, logging every try, and names this
    node's own address in them instead of the one given."""
    import_ray()
    if address not in ("auto", "local") and not address.startswith("ray://"):
        check_head(address)


def check_head(address: str, timeout_s: float = 5.0) -> None:
    """Something listens at HOST:PORT, or one line saying what and how to fix it."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except ValueError:
        raise ConfigError(f"--ray: give HOST:PORT with a port number, not {address!r}") from None
    except OSError as err:
        reason = err.strerror or type(err).__name__
    raise ConfigError(f"--ray: no Ray head answers at {address} ({reason}); start one there "
                      f"(ray start --head --port={port}) or give the address `ray status` names")


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    flag = "--ray"
    where = "a cluster"

    def __init__(self, address: str, console: Console, interrupts: Interrupts, shared_out: bool = False):
        self.address = address
        self.console = console
        self.interrupts = interrupts
        self.shared_out = shared_out
        self.local_dir: Path | None = None  # the session folder of a cluster --ray local started
        self.local_files: list[Path] = []  # what that cluster created besides, to remove
        self._actors: list[Any] = []
        self._lock = threading.Lock()

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--ray", nargs="?", const="auto", default=None)
        parser.add_argument("--shared-out", action="store_true")

    @classmethod
    def check_flags(cls, flags: argparse.Namespace) -> None:
        if flags.shared_out and flags.ray is None:
            raise ConfigError("--shared-out: only with --ray (on one machine every worker writes into --out anyway)")
        address = flags.ray
        if address is not None and not (address in ("auto", "local") or address.startswith("ray://") or ":" in address):
            raise ConfigError(f"--ray: give auto, local, HOST:PORT or ray://HOST:PORT, not {address!r}")

    @classmethod
    def from_flags(cls, flags: argparse.Namespace, console: Console, interrupts: Interrupts) -> "RayExecutor":
        preflight(flags.ray)  # one line now, not after the plan, if Ray is not installed or no head answers
        return cls(flags.ray, console, interrupts, flags.shared_out)

    def connect(self) -> Any:
        """Ray, connected to --ray's cluster; one line naming the address given otherwise."""
        ray = import_ray()
        try:
            if self.address == "local":
                # What a local cluster writes that was not there: its session folder, Ray's token file.
                self.local_files = [p for p in LOCAL_TOKEN_FILES if not p.exists()]
                self.local_dir = Path(tempfile.mkdtemp(prefix="gpushare-ray-local-", dir="/tmp"))  # sockets: short
                ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
                         _temp_dir=str(self.local_dir))
            else:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            self.disconnect(ray)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            hint = (" (the head uses token authentication: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH, to its token "
                    "here as on the head)") if "auth" in str(err).lower() else ""
            raise ConfigError(f"--ray: cannot connect to the Ray cluster at {self.address}: {first}{hint}") from None
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < 1:
            self.disconnect(ray)
            raise ConfigError(f"--ray: the Ray cluster at {self.address} has no GPU (start its nodes with --num-gpus)")
        say(self.console, f"Ray: {len(ray.nodes())} node(s), {gpus:g} GPU(s) at {self.address}")
        return ray

    def run(self, work: list[tuple[ScenarioPlan, Todo]], book: MatrixBook) -> None:
        ray = self.connect()
        from ray.util.placement_group import placement_group

        try:
            actor_class = ray.remote(ScenarioActor)
            # Reserved here, longest first, so that Ray's queue holds them in that order.
            ordered = [(plan, todo, placement_group([{"GPU": 1, "CPU": 1}])) for plan, todo in longest_first(work)]
            threads = [threading.Thread(target=self._scenario, args=(ray, actor_class, plan, todo, group, book),
                                        daemon=True) for plan, todo, group in ordered]

            def end_actors(name: str) -> None:
                book.stop()
                with self._lock:
                    for actor in self._actors:
                        ray.kill(actor)

            wait_for(threads, self.interrupts, end_actors)
        finally:
            self.disconnect(ray)

    def disconnect(self, ray: Any) -> None:
        """Leave the cluster; a cluster --ray local started is ended and its session folder removed."""
        ray.shutdown()
        if self.local_dir is not None:
            shutil.rmtree(self.local_dir, ignore_errors=True)
            self.local_dir = None
        for path in self.local_files:  # the token file, then its folder once empty
            try:
                path.rmdir() if path.is_dir() else path.unlink(missing_ok=True)
            except OSError:
                pass
        self.local_files = []

    def _scenario(self, ray: Any, actor_class: Any, plan: ScenarioPlan, todo: Todo, group: Any,
                  book: MatrixBook) -> None:
        from ray.util.placement_group import remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        name = plan.config.scenario
        report = ScenarioReport(name, todo, book.publish)

        def publish(answer: dict[str, Any], cell: str | None = None) -> None:
            if answer.get("packed") is not None:
                unpack(answer["packed"], book.out / name / cell if cell else book.out / name)
            for line in answer["events"]:
                report(decode_event(line))

        actor, current, token, lost = None, None, uuid.uuid4().hex[:16], False
        handed: set[str] = set()
        try:
            while not book.stopped:
                ready, _ = ray.wait([group.ready()], timeout=0.5)
                if ready:
                    break
            if book.stopped:
                report.rest("not_run", "the matrix was interrupted")
                return
            with self._lock:
                actor = actor_class.options(
                    num_gpus=1, num_cpus=1, max_restarts=0,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(group)).remote()
                self._actors.append(actor)
            opened = ray.get(actor.open.remote(replace(plan, search=None), str(book.out.resolve()) if self.shared_out
                                               else None, token))
            publish(opened)
            if opened["error"]:
                say(self.console, f"scenario {name} failed on {opened['where']}: {opened['error']}")
                report.rest("failed", opened["error"], 1)
                publish(ray.get(actor.close.remote([c.name for c in todo.known])))
                return
            for position, cell in enumerate(todo):
                if book.stopped:
                    break
                if position:
                    ray.get(actor.drain.remote())
                current = cell
                publish(ray.get(actor.run_cell.remote(cell)), cell.name)
                handed.add(cell.name)
                current = None
            publish(ray.get(actor.close.remote([c.name for c in todo.known])))
            report.rest("not_run", "the matrix was interrupted")
        except ray.exceptions.RayError as err:
            lost = actor is not None and not self.shared_out
            if book.stopped:
                report.rest("not_run", "the matrix was interrupted")
            else:  # the cell under way failed with its worker; the cells after it were never begun
                reason = f"lost its Ray worker or node: {type(err).__name__}: {str(err).splitlines()[0]}"
                say(self.console, f"scenario {name} {reason}")
                report.lost(reason, current)
        finally:
            if actor is not None:
                ray.kill(actor)
            if lost:
                self._fetch_back(ray, group, token, name, handed, book.out)
            remove_placement_group(group)

    def _fetch_back(self, ray: Any, group: Any, token: str, scenario: str, handed: set[str], out: Path,
                    timeout_s: float = 60.0) -> None:
        """What a lost actor left in its node's folder, brought into out/SCENARIO by a task on
        that node (its placement group's), which removes the folder: the cells it had not
        handed back, as they stood (a rerun keeps them as earlier attempts), and the scenario's
        logs. Cells already handed back are not brought twice."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        task = ray.remote(fetch_actor_folder).options(
            num_cpus=0, scheduling_strategy=PlacementGroupSchedulingStrategy(group))
        try:
            packed = ray.get(task.remote(token), timeout=timeout_s)
        except ray.exceptions.RayError as err:
            say(self.console, f"scenario {scenario}: its lost worker's folder ({actor_folder(token).name}) could not "
                              f"be fetched ({type(err).__name__}); `gpushare doctor --clean` on its node removes it")
            return
        if packed is None:
            return
        staging = Path(tempfile.mkdtemp(prefix=".fetched-", dir=out))
        try:
            unpack(packed, staging)
            brought = []
            for entry in sorted((staging / scenario).iterdir()) if (staging / scenario).is_dir() else []:
                target = out / scenario / entry.name
                if entry.name in handed or target.exists():
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                entry.rename(target)
                brought.append(entry.name)
            if brought:
                say(self.console, f"scenario {scenario}: fetched from its lost worker's node into "
                                  f"{out / scenario}: {', '.join(brought)}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
