"""`trainer.launcher=ray`: Ray places and starts the ranks, nothing more (SPMD; Ray is not a controller here).

A placement group with one bundle per rank ({"CPU": ray.num_cpus_per_worker, "GPU": ray.num_gpus_per_worker}),
STRICT_PACK per machine (one group of trainer.nproc_per_node bundles per node), one Ray actor per rank. Rank 0's
actor reports its node IP and a free port (MASTER_ADDR / MASTER_PORT); every actor then starts
`python -m scirl train <the same args>` as a subprocess with torchrun's env vars (WORLD_SIZE, RANK, LOCAL_RANK,
LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT), OMP_NUM_THREADS, and CUDA_VISIBLE_DEVICES = the GPUs Ray
gave the node's ranks, in local-rank order (so LOCAL_RANK indexes the rank's own GPU and NCCL sees its peers).

A subprocess, not the training inside the actor's own process: the rank is then exactly what torchrun starts (its
main thread gets SIGTERM / SIGINT for the checkpoint-at-the-step-boundary stop, reward workers fork from a process
without Ray's gRPC threads, `os._exit` on a second signal ends only the rank), and the actor stays responsive to
the driver (poll, forward a signal, kill). The rank dies with its actor (scirl.procs), the actor with the job.

The driver polls every rank. A failing rank (its exit code and one-line error come back through
scirl.launch.rank_report) makes the driver kill the others and exit with that rank's code (no hang). SIGTERM /
Ctrl-C to the driver are forwarded to every rank (each checkpoints at its next step boundary); a second one kills
them. With ray.address null the driver starts a local Ray instance (ray.init) in a temp folder of its own under
RAY_TMPDIR (default /tmp) with an in-memory auth token (RAY_AUTH_TOKEN, never ~/.ray/auth_token), and removes the
folder after ray.shutdown() (scirl.launch.ray_reaper ends the instance and removes the folder even after kill -9
of the driver). SCIRL_* env vars of the driver are passed to every rank, and each rank runs in the driver's
working folder where its node has it (relative paths in the command mean the same everywhere). Each rank's
stdout / stderr come back through its actor (not Ray's log streaming, which can lag a minute on a loaded machine):
rank 0's lines as they are, the others' prefixed with "[rank N] ".
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Iterator

from scirl import procs
from scirl.config import Config
from scirl.errors import ScirlError
from scirl.launch import LAUNCHER_PID, threads_per_rank
from scirl.launch.ray_reaper import MARKER_VAR, start_reaper, stop_reaper
from scirl.launch.rank_report import REPORT_DIR, describe_exit, read_report

REPORT_PARENT = "SCIRL_RAY_REPORT_PARENT"  # where rank actors put their report folders (a local instance's temp)
from scirl.launch.signals import ForwardSignals
from scirl.launch.torchrun import LaunchFailed

PLACEMENT_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 5.0
POLL_S = 0.2


class RankProcess:
    """The Ray actor of one rank: it reports where it runs, then starts and watches the rank's process and hands
    its output lines to the driver (each poll), so that they arrive in order and all of them before the driver
    ends, whatever Ray's log streaming does on a loaded machine."""

    def __init__(self, rank: int) -> None:
        self.proc: Any = None
        self.ended_at: float | None = None
        # inside a local instance's temp folder (inherited env), which the reaper removes even after kill -9
        self.report_dir = tempfile.mkdtemp(prefix="scirl-rank-", dir=os.environ.get(REPORT_PARENT) or None)
        self.rank = rank
        self.lines: list[tuple[int, str]] = []  # (1 stdout | 2 stderr, line) not yet handed to the driver
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return f"rank {self.rank}"

    def where(self) -> tuple[str, list[str], int]:
        import ray

        return ray.util.get_node_ip_address(), [str(g) for g in ray.get_gpu_ids()], os.getpid()

    def free_port(self) -> int:
        with socket.socket() as s:
            s.bind(("", 0))
            return s.getsockname()[1]

    def start(self, argv: list[str], env: dict[str, str], cwd: str) -> int:
        full = {**os.environ, **env, LAUNCHER_PID: str(os.getpid()), REPORT_DIR: self.report_dir,
                "PYTHONUNBUFFERED": "1"}
        # the driver's folder, so that relative paths in the command (recipe, trainer.output_dir) mean the same
        self.proc = procs.popen([sys.executable, *argv], env=full, cwd=cwd if os.path.isdir(cwd) else None,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # dies with this actor's process
        readers = [threading.Thread(target=self._read, args=(stream, fd), daemon=True)
                   for fd, stream in ((1, self.proc.stdout), (2, self.proc.stderr))]
        for r in readers:
            r.start()
        threading.Thread(target=self._wait, args=(readers,), daemon=True).start()
        return self.proc.pid

    def _read(self, stream: Any, fd: int) -> None:
        for raw in iter(stream.readline, b""):
            with self.lock:
                self.lines.append((fd, raw.decode("utf-8", "replace")))
        stream.close()

    def _wait(self, readers: list[threading.Thread]) -> None:
        self.proc.wait()
        for r in readers:  # the rest of its output (a straggling child holding the pipe gets 5 s)
            r.join(timeout=5)
        self.ended_at = time.time()

    def poll(self) -> tuple[tuple[int, dict | None, float] | None, list[tuple[int, str]]]:
        """(None while the rank runs, else (exit status, its report or None, when it ended)), new output lines."""
        ended = self.ended_at
        with self.lock:
            lines, self.lines = self.lines, []
        if ended is None:
            return None, lines
        report = read_report(self.report_dir, self.rank)
        shutil.rmtree(self.report_dir, ignore_errors=True)  # the driver polls an ended rank once
        return (self.proc.returncode, report, ended), lines

    def send(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.report_dir, ignore_errors=True)


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ScirlError(f"trainer.launcher=ray: ray is not importable ({e}); `pip install ray==2.60.0` or use "
                         "trainer.launcher=torchrun") from None
    return ray


def _bootstrap_hostport(address: str) -> str:
    if address.startswith("ray://"):
        return address[len("ray://"):]
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address  # what ray.init(address="auto") reads

            found = canonicalize_bootstrap_address("auto")
        except Exception as e:  # noqa: BLE001 - Ray's own "no cluster" errors come in several types
            raise ScirlError(f"ray.address=auto: no running Ray cluster found ({str(e).splitlines()[0]}); start one "
                             "with `ray start --head`, or set ray.address=null for a local instance") from None
        if not found:
            raise ScirlError("ray.address=auto: no running Ray cluster found; start one with `ray start --head`, or "
                             "set ray.address=null for a local instance")
        return found
    return address


def _check_reachable(address: str) -> None:
    """Fail in seconds on an address nothing listens on (ray.init itself retries for a long time)."""
    hostport = _bootstrap_hostport(address)
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ScirlError(f"ray.address={address}: expected auto, host:port or ray://host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ScirlError(f"ray.address={address}: cannot reach a Ray cluster at {hostport} "
                         f"({e.strerror or type(e).__name__}); start it with `ray start --head`, or set "
                         "ray.address=null for a local instance") from None


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def ray_session(cfg: Config) -> Iterator[Any]:
    """Connect to ray.address, or start a local instance that leaves nothing behind; yield the ray module."""
    rc, world = cfg.ray, cfg.trainer.nnodes * cfg.trainer.nproc_per_node
    env = {"RAY_DEDUP_LOGS": "0"}  # Ray's own worker messages in full (the ranks' output comes through poll)
    with _env(env):  # set before Ray is imported: it reads it then
        ray = _import_ray()
        if rc.address is not None:
            _check_reachable(rc.address)
            try:
                ray.init(address=rc.address, logging_level=logging.WARNING, log_to_driver=False)
            except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, AuthenticationError...
                raise ScirlError(f"ray.address={rc.address}: cannot connect ({str(e).splitlines()[0]})") from None
            try:
                yield ray
            finally:
                ray.shutdown()
            return
        with _local_instance(ray, rc, world):
            yield ray


@contextlib.contextmanager
def _local_instance(ray: Any, rc: Any, world: int) -> Iterator[None]:
    temp = tempfile.mkdtemp(prefix="scirl-ray-", dir=os.environ.get("RAY_TMPDIR") or "/tmp")
    marker = secrets.token_hex(8)
    env = {MARKER_VAR: marker,  # every process of the instance inherits it: the reaper finds them after a kill -9
           REPORT_PARENT: temp}
    if not any(k in os.environ for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        # token auth as Ray's default, with the token in the environment (inherited by the instance's processes)
        # instead of a file Ray would write to ~/.ray/auth_token and leave there
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    reaper = start_reaper(marker, temp)
    try:
        with _env(env):
            _reload_auth_settings()
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(world * rc.num_cpus_per_worker)),
                     object_store_memory=rc.object_store_memory, _temp_dir=temp, include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=False)
            try:
                yield
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(temp, ignore_errors=True)
        stop_reaper(reaper)


def _reload_auth_settings() -> None:
    """Ray reads RAY_AUTH_MODE / RAY_AUTH_TOKEN once, at import; this process may have imported it earlier."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config as RayletConfig

        RayletConfig.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass


def _place(ray: Any, cfg: Config, gpus: float) -> list[tuple[Any, int]]:
    """One STRICT_PACK placement group of nproc_per_node bundles per node; (group, bundle index) per rank."""
    from ray.util.placement_group import placement_group

    t, rc = cfg.trainer, cfg.ray
    bundle = {"CPU": rc.num_cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    groups = [placement_group([dict(bundle)] * t.nproc_per_node, strategy="STRICT_PACK") for _ in range(t.nnodes)]
    ready, _ = ray.wait([g.ready() for g in groups], num_returns=len(groups), timeout=PLACEMENT_TIMEOUT_S)
    if len(ready) < len(groups):
        raise ScirlError(f"trainer.nnodes={t.nnodes} x trainer.nproc_per_node={t.nproc_per_node}: the Ray cluster "
                         f"cannot place {t.nproc_per_node} ranks of {bundle} on each of {t.nnodes} node(s) within "
                         f"{PLACEMENT_TIMEOUT_S:.0f} s (available: {ray.available_resources()}); lower them or "
                         "ray.num_cpus_per_worker / ray.num_gpus_per_worker")
    return [(g, i) for g in groups for i in range(t.nproc_per_node)]


def rank_envs(where: list[tuple[str, list[str], int]], master: tuple[str, int], threads: int,
              extra: dict[str, str]) -> list[dict[str, str]]:
    """torchrun's env vars for each rank from where its actor runs (node IP, Ray GPU ids), in rank order."""
    nodes: dict[str, list[int]] = {}
    for rank, (ip, _, _) in enumerate(where):
        nodes.setdefault(ip, []).append(rank)
    node_rank = {ip: i for i, ip in enumerate(nodes)}
    envs = []
    for rank, (ip, gpu_ids, _) in enumerate(where):
        local = nodes[ip]
        env = {**extra, "WORLD_SIZE": str(len(where)), "RANK": str(rank), "LOCAL_RANK": str(local.index(rank)),
               "LOCAL_WORLD_SIZE": str(len(local)), "GROUP_RANK": str(node_rank[ip]), "NODE_RANK": str(node_rank[ip]),
               "MASTER_ADDR": master[0], "MASTER_PORT": str(master[1]), "OMP_NUM_THREADS": str(threads)}
        # the node's GPUs with each rank's first in local-rank order (cuda:LOCAL_RANK is this rank's own GPU; NCCL
        # sees its peers), then any further GPUs of its ranks; a rank without a GPU sees none (CPU, gloo)
        firsts = [where[r][1][0] for r in local if where[r][1]]
        rest = [g for r in local for g in where[r][1][1:]]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(dict.fromkeys(firsts + rest)) if gpu_ids else ""
        envs.append(env)
    return envs


def launch_ray(cfg: Config, worker_argv: list[str]) -> int:
    """Run `worker_argv` (["-m", "scirl", "train", ...]) on nnodes x nproc_per_node Ray actors; return the run's
    exit status (raises LaunchFailed with the failing rank's error, ScirlError on a bad ray.* setting)."""
    t, rc = cfg.trainer, cfg.ray
    if rc.num_gpus_per_worker is not None and rc.num_gpus_per_worker != int(rc.num_gpus_per_worker):
        raise ScirlError(f"ray.num_gpus_per_worker={rc.num_gpus_per_worker}: each rank needs whole GPUs of its own "
                         "(NCCL does not share a GPU between ranks); use 1, or 0 for CPU ranks")
    with ray_session(cfg) as ray:
        gpus = rc.num_gpus_per_worker
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0

        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        slots = _place(ray, cfg, gpus)
        remote = ray.remote(RankProcess)
        actors = [remote.options(num_cpus=rc.num_cpus_per_worker, num_gpus=gpus, max_restarts=0,
                                 scheduling_strategy=PlacementGroupSchedulingStrategy(
                                     placement_group=g, placement_group_bundle_index=i)).remote(rank)
                  for rank, (g, i) in enumerate(slots)]
        try:
            try:
                where = ray.get([a.where.remote() for a in actors])
            except Exception as e:  # noqa: BLE001 - the actor could not start there (scirl not importable, ...)
                last = [line for line in str(e).splitlines() if line.strip()][-1].strip()
                raise LaunchFailed(f"the ranks' Ray actors could not start ({last}); is this scirl installed on every "
                                   "node of the cluster?", 1) from None
            master = (where[0][0], ray.get(actors[0].free_port.remote()))
            extra = {k: v for k, v in os.environ.items()
                     if k.startswith("SCIRL_") and k not in (LAUNCHER_PID, REPORT_DIR, REPORT_PARENT)}
            envs = rank_envs(where, master, threads_per_rank(cfg, rc.num_cpus_per_worker), extra)
            ray.get([a.start.remote(worker_argv, env, os.getcwd()) for a, env in zip(actors, envs)])
            return _watch(ray, actors, where)
        finally:
            for a in actors:
                with contextlib.suppress(Exception):
                    ray.kill(a)


def _watch(ray: Any, actors: list[Any], where: list[tuple[str, list[str], int]]) -> int:
    """Wait for every rank; forward signals; on the first failure kill the rest and raise its error."""
    pending: list[tuple[str, int]] = []
    forward = ForwardSignals(forward=lambda s: pending.append(("send", s)),
                             kill_now=lambda s: pending.append(("kill", s)))
    done: dict[int, tuple[int, dict | None, float]] = {}
    with forward:
        while len(done) < len(actors):
            while pending:
                what, signum = pending.pop(0)
                live = [a for r, a in enumerate(actors) if r not in done]
                if what == "send":
                    ray.get([a.send.remote(signum) for a in live])
                else:
                    _kill(ray, live)
                    return 128 + signum
            polls = {rank: actor.poll.remote() for rank, actor in enumerate(actors) if rank not in done}
            for rank, ref in polls.items():
                try:
                    status, lines = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - RayActorError: the actor (its node, its process) died
                    status, lines = (-signal.SIGKILL, {"code": 1, "error": f"its Ray actor died on {where[rank][0]} "
                                                       f"({type(e).__name__})"}, time.time()), []
                _echo(rank, lines)
                if status is not None:
                    done[rank] = status
            failed = {r: s for r, s in done.items() if _status(s)[1] and forward.signum is None}
            if failed:
                rank, (code, report, _) = min(failed.items(), key=lambda item: item[1][2])  # the first to end
                _kill(ray, [a for r, a in enumerate(actors) if r not in done])
                status = _status((code, report, 0.0))[0]
                how = f"exit code {status}" if report is not None else describe_exit(code)
                error = (report or {}).get("error") or "no error report; its output is above"
                raise LaunchFailed(f"rank {rank} failed ({how}): {error}", status)
            time.sleep(POLL_S)
    if forward.signum is not None:
        return 128 + forward.signum
    return max((_status(s)[0] for s in done.values()), default=0)  # every rank ended well, or stopped by a signal


def _echo(rank: int, lines: list[tuple[int, str]]) -> None:
    """A rank's output on the driver's stdout / stderr: rank 0's as it is, the others' prefixed with their rank."""
    prefix = "" if rank == 0 else f"[rank {rank}] "
    for fd, line in lines:
        stream = sys.stdout if fd == 1 else sys.stderr
        stream.write(prefix + line)
    if lines:
        sys.stdout.flush()
        sys.stderr.flush()


def _status(status: tuple[int, dict | None, float]) -> tuple[int, bool]:
    """(the rank's exit status, whether it failed): its report's code where it wrote one (a rank stopped by a
    signal reports 128 + signal and is no failure), else its process's status (killed by a signal: 128 + it)."""
    code, report, _ = status
    if report is not None:
        reported = int(report.get("code", code))
        return reported, reported != 0 and reported <= 128
    return (code if code >= 0 else 128 - code), code != 0


def _kill(ray: Any, actors: list[Any]) -> None:
    with contextlib.suppress(Exception):
        ray.get([a.kill.remote() for a in actors], timeout=30)
