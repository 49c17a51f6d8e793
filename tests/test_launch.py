"""The launchers on real processes: scirl starts torchrun itself (`trainer.nproc_per_node=2`) or Ray actors
(`trainer.launcher=ray`, a real local Ray instance); the ranks join one gloo group; a rank's failure ends the run
with its error and exit code (no hang); SIGTERM reaches every rank once; kill -9 of the launcher leaves no process;
a local Ray instance leaves nothing in its temp folder and writes no auth token; bad launcher settings are one
line, exit 2. The mechanics use a tiny worker (`python -m scirl.launch.selftest`: all-reduce of the ranks)."""

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from safetensors.torch import load_file

from scirl import procs
from scirl.cli import main as scirl_main

REWARD = Path(__file__).parent / "helpers" / "blocking_reward.py"

DEADLINE = 180.0  # generous: a loaded 2-core machine
FAULT = "ckpt:mid_save"  # a point every rank reaches (the DCP shards written, the trainer state not yet)


def env_with(**extra) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for k in ("SCIRL_FAULT", "SCIRL_FAULT_RANK", "SCIRL_SELFTEST_SLEEP", "SCIRL_SELFTEST_FAIL_RANK", "WORLD_SIZE",
              "RANK", "OMP_NUM_THREADS", "RAY_ADDRESS"):
        env.pop(k, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def train_args(out: Path, name: str, **extra) -> list[str]:
    """A 2-rank run of the tiny recipe: 1 step of 4 prompts x 4 samples (2 prompts per rank), 40 new tokens."""
    base = {"trainer.output_dir": out, "trainer.run_name": name, "trainer.total_steps": 1, "trainer.save_freq": 0,
            "trainer.test_freq": 0, "trainer.progress": "false", "trainer.save_hf": "true", "trainer.nproc_per_node": 2,
            "data.train_size": 64, "data.val_size": 8, "data.train_batch_size": 4, "actor.ppo_mini_batch_size": 4,
            "actor.ppo_micro_batch_size": 8, "rollout.n": 4, "rollout.val_n": 4, "rollout.max_new_tokens": 40,
            "reward.workers": 1, "actor.lr": 1e-3}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def train(args: list[str], env: dict, **popen) -> subprocess.Popen:
    return procs.popen([sys.executable, "-m", "scirl", "train", *args], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, **popen)


def final_weights(run: Path) -> dict:
    return load_file(run / "checkpoints" / "step_1" / "model" / "model.safetensors")


def selftest(launcher: str, *overrides: str, env: dict, **popen) -> subprocess.Popen:
    return procs.popen([sys.executable, "-m", "scirl.launch.selftest", launcher, "2", *overrides], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=DEADLINE)
    return proc.returncode, out, err


def rank_lines(out: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(0) for m in re.finditer(r"selftest rank (\d)/2 [^\n]*", out)}


def wait_for(cond, what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    from scirl.launch.torchrun import children

    out, todo = [], [pid]
    while todo:
        for c in children(todo.pop()):
            out.append(c)
            todo.append(c)
    return out


# ---------------------------------------------------------------------------------------------------- torchrun


def test_threads_per_rank_rule(monkeypatch):
    from scirl.config import load_config
    from scirl.launch import threads_per_rank

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_per_rank(load_config(None, ["trainer.num_threads=5"]), 8.0) == 5
    assert threads_per_rank(load_config(None, []), 8.0) == 8  # the rank's share of the cores
    assert threads_per_rank(load_config(None, []), 0.5) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads_per_rank(load_config(None, []), 8.0) == 2  # the user's environment wins over the share
    assert threads_per_rank(load_config(None, ["trainer.num_threads=5"]), 8.0) == 5


def test_a_rank_started_by_torchrun_trains_itself(monkeypatch):
    """`torchrun --nproc-per-node 2 -m scirl train ... trainer.nproc_per_node=2` by hand: no second launch."""
    from scirl.config import load_config
    from scirl.launch import launch_if_needed

    cfg = load_config(None, ["trainer.nproc_per_node=2"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launch_if_needed(cfg, ["trainer.nproc_per_node=2"]) is None
    cfg = load_config(None, ["trainer.nproc_per_node=2", "trainer.launcher=ray"])
    assert launch_if_needed(cfg, []) is None
    monkeypatch.delenv("WORLD_SIZE")
    assert launch_if_needed(load_config(None, []), []) is None  # one process: no launcher at all


def test_torchrun_exit_status_is_the_first_failing_ranks_code_and_error():
    """What the torchrun launcher makes of the ranks' reports (torchrun itself exits 1 on any failure)."""
    from scirl.launch.torchrun import LaunchFailed, run_status

    ok, stop = {"code": 0, "error": "", "time": 5.0}, {"code": 143, "error": "stopped by SIGTERM", "time": 6.0}
    bad = {"code": 2, "error": "data.train: no such file", "time": 3.0}
    gloo = {"code": 1, "error": "RuntimeError: Connection closed by peer", "time": 4.0}
    assert run_status(0, {0: ok, 1: ok}, 2, None) == 0
    assert run_status(1, {0: ok, 1: ok}, 2, signal.SIGTERM) == 143  # a stop we forwarded
    assert run_status(0, {0: stop, 1: stop}, 2, None) == 143  # a stop sent to the ranks directly
    with pytest.raises(LaunchFailed) as e:  # the first rank to fail, its code and its line; the others follow it
        run_status(1, {0: gloo, 1: bad}, 2, None)
    assert (str(e.value), e.value.exit_code) == ("rank 1 failed (exit code 2): data.train: no such file", 2)
    with pytest.raises(LaunchFailed) as e:  # killed: no report; torchrun's summary names the signal
        run_status(1, {0: stop}, 2, None)
    assert e.value.exit_code == 137 and str(e.value).startswith("rank 1 died without a report")


def test_ray_rank_env_vars_give_each_rank_its_own_gpu_as_cuda_local_rank():
    from scirl.launch.ray_launcher import rank_envs

    where = [("10.0.0.1", ["3"], 11), ("10.0.0.1", ["1"], 12), ("10.0.0.2", ["0"], 13), ("10.0.0.2", ["5"], 14)]
    envs = rank_envs(where, ("10.0.0.1", 29400), 4, {"SCIRL_X": "y"})
    assert [(e["RANK"], e["LOCAL_RANK"], e["GROUP_RANK"], e["CUDA_VISIBLE_DEVICES"]) for e in envs] == [
        ("0", "0", "0", "3,1"), ("1", "1", "0", "3,1"), ("2", "0", "1", "0,5"), ("3", "1", "1", "0,5")]
    assert all(e["WORLD_SIZE"] == "4" and e["LOCAL_WORLD_SIZE"] == "2" and e["MASTER_ADDR"] == "10.0.0.1"
               and e["MASTER_PORT"] == "29400" and e["OMP_NUM_THREADS"] == "4" and e["SCIRL_X"] == "y" for e in envs)
    two = rank_envs([("h", ["0", "1"], 1), ("h", ["2", "3"], 2)], ("h", 1), 1, {})  # 2 GPUs per rank
    assert two[1]["CUDA_VISIBLE_DEVICES"] == "0,2,1,3"  # cuda:1 is rank 1's first GPU
    cpu = rank_envs([("h", [], 1), ("h", [], 2)], ("h", 1), 1, {})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in cpu] == ["", ""]  # CPU ranks see no GPU even where CUDA is


def test_torchrun_ranks_join_one_group_and_sigterm_reaches_every_rank_once():
    proc = selftest("torchrun", "trainer.num_threads=3", env=env_with(SCIRL_SELFTEST_SLEEP=90))
    seen = []
    wait_for(lambda: seen.append(proc.stdout.readline()) or len(rank_lines("".join(seen))) == 2, "both ranks")
    for rank, line in rank_lines("".join(seen)).items():  # all-reduce of 0 + 1 over gloo; env vars; our threads
        assert f"selftest rank {rank}/2 local {rank}/2 sum 1 omp 3 " in line
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc)
    out = "".join(seen) + out
    assert code == 128 + signal.SIGTERM, err
    assert "selftest rank 0 stopped by SIGTERM" in out and "selftest rank 1 stopped by SIGTERM" in out
    assert "scirl: SIGTERM received: every rank stops after this step" in err and "second" not in err


# ---------------------------------------------------------------------------------------------------- bad input


def one_line_error(capsys, args: list[str]) -> str:
    assert scirl_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_key_fails_before_any_process_starts(capsys):
    start = time.monotonic()
    err = one_line_error(capsys, ["train", "trainer.nproc_per_node=2", "trainer.nprocs=2"])
    assert err.startswith("scirl: error: unknown config key 'trainer.nprocs'")
    assert time.monotonic() - start < 10


def test_torchrun_on_several_machines_says_what_to_run(capsys):
    err = one_line_error(capsys, ["train", "trainer.nnodes=2", "trainer.nproc_per_node=8"])
    assert err.startswith("scirl: error: trainer.nnodes=2 with trainer.launcher=torchrun: start torchrun on each "
                          "machine yourself, `torchrun --nnodes 2 --nproc-per-node 8 --node-rank <0..1>")
    assert "-m scirl train trainer.nnodes=2 trainer.nproc_per_node=8`, or use trainer.launcher=ray" in err


def test_a_fraction_of_a_gpu_per_ray_rank_is_refused(capsys):
    err = one_line_error(capsys, ["train", "trainer.launcher=ray", "ray.num_gpus_per_worker=0.5"])
    assert err.startswith("scirl: error: ray.num_gpus_per_worker=0.5: each rank needs whole GPUs of its own")


def test_ray_not_importable_is_one_line_naming_the_key(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where ray is not installed
    err = one_line_error(capsys, ["train", "trainer.launcher=ray", "trainer.nproc_per_node=2"])
    assert err.startswith("scirl: error: trainer.launcher=ray: ray is not importable")


def test_ray_address_not_reachable_is_one_line_in_seconds(capsys, monkeypatch, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    start = time.monotonic()
    err = one_line_error(capsys, ["train", "trainer.launcher=ray", f"ray.address=127.0.0.1:{port}"])
    assert err.startswith(f"scirl: error: ray.address=127.0.0.1:{port}: cannot reach a Ray cluster")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # where Ray looks for the running cluster's address
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    err = one_line_error(capsys, ["train", "trainer.launcher=ray", "ray.address=auto"])
    assert err.startswith("scirl: error: ray.address=auto: no running Ray cluster found")
    assert time.monotonic() - start < 30


# ---------------------------------------------------------------------------------------------------- Ray


def test_kill_9_of_scirl_train_on_two_ranks_leaves_no_process_and_the_tee_ends(tmp_path):
    env = env_with(SCIRL_TEST_COUNTER=tmp_path / "calls", SCIRL_TEST_BLOCK_AT=1, SCIRL_TEST_MARKER=tmp_path / "blocked",
                   SCIRL_TEST_RELEASE=tmp_path / "release")
    launcher = train(train_args(tmp_path, "k", **{"reward.name": f"{REWARD}:score"}), env, start_new_session=True)
    tee = subprocess.Popen(["tee", str(tmp_path / "log")], stdin=launcher.stdout, stdout=subprocess.DEVNULL)
    launcher.stdout.close()
    wait_for(lambda: (tmp_path / "blocked").exists(), "a rank's first reward call")
    family = descendants(launcher.pid)
    assert len(family) >= 5  # torchrun's agent, 2 ranks, a reward worker each
    launcher.kill()
    launcher.wait(timeout=DEADLINE)
    wait_for(lambda: not any(alive(p) for p in family), "torchrun, the ranks and their workers to die", 10)
    assert tee.wait(timeout=10) == 0  # nothing holds the pipe: `scirl train ... | tee log` returns
    launcher.stderr.close()


def test_ray_local_instance_runs_the_ranks_and_leaves_nothing_behind_even_after_kill_9(tmp_path):
    ray_tmp = Path(tempfile.mkdtemp(prefix="sr-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    home = tmp_path / "home"
    home.mkdir()
    try:
        proc = selftest("ray", "ray.object_store_memory=100000000",
                        env=env_with(SCIRL_SELFTEST_SLEEP=120, RAY_TMPDIR=ray_tmp, HOME=home), start_new_session=True)
        seen = []
        wait_for(lambda: seen.append(proc.stdout.readline()) or len(rank_lines("".join(seen))) == 2, "both ranks")
        for rank, line in rank_lines("".join(seen)).items():  # one group; env vars; 1 CPU per rank; CPU: no GPU
            assert f"selftest rank {rank}/2 local {rank}/2 sum 1 omp 1 cuda_visible  pid" in line
        family = descendants(proc.pid)
        assert len(family) >= 6  # Ray's GCS, raylet, agents, 2 actors, 2 ranks
        proc.kill()  # the driver: no ray.shutdown(), no cleanup of its own
        proc.wait(timeout=DEADLINE)
        wait_for(lambda: not any(alive(p) for p in family), "every process of the Ray instance to end", 30)
        wait_for(lambda: list(ray_tmp.iterdir()) == [], "the instance's temp folder to go", 30)
        assert not (home / ".ray").exists()  # the auth token lived in the environment only
        proc.stdout.close()
        proc.stderr.close()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster():
    """A running Ray cluster (`ray start --head`, as on a real machine) shared by this module's Ray tests; its own
    token; stopped (its processes only) and its temp folder removed at the end."""
    temp = Path(tempfile.mkdtemp(prefix="sc-", dir="/tmp"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env = env_with(HOME=temp, **auth)
    head = procs.popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus", "2",
                        "--object-store-memory", "100000000", "--temp-dir", str(temp), "--port", str(port),
                        "--include-dashboard", "false", "--disable-usage-stats"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: (temp / "ray_current_cluster").exists() or head.poll() is not None, "ray start")
        assert head.poll() is None
        yield f"127.0.0.1:{port}", auth
    finally:
        head.terminate()  # `ray start --block` stops what it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)




@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    """`scirl train ... trainer.nproc_per_node=2`: scirl starts torchrun, 2 gloo ranks, 1 step."""
    out = tmp_path_factory.mktemp("torchrun")
    code, _, err = finish(train(train_args(out, "t"), env_with()))
    assert code == 0, err
    return out / "t"


def test_ray_sigterm_reaches_every_rank_once_and_the_run_exits_143(ray_cluster):
    address, auth = ray_cluster
    proc = selftest("ray", f"ray.address={address}", env=env_with(SCIRL_SELFTEST_SLEEP=120, **auth))
    seen = []
    wait_for(lambda: seen.append(proc.stdout.readline()) or len(rank_lines("".join(seen))) == 2, "both ranks")
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc)
    assert code == 128 + signal.SIGTERM, err
    out = "".join(seen) + out
    assert "selftest rank 0 stopped by SIGTERM" in out and "selftest rank 1 stopped by SIGTERM" in out
    assert "second" not in err


def test_two_ranks_under_ray_train_the_weights_of_two_ranks_under_torchrun(torchrun_run, ray_cluster, tmp_path):
    address, auth = ray_cluster
    code, out, err = finish(train(train_args(tmp_path, "r", **{"trainer.launcher": "ray", "ray.address": address}),
                                  env_with(**auth)))
    assert code == 0, err
    assert "1 steps in" in out and "[rank 0]" not in out  # rank 0's console, as from one process
    ray_w, torchrun_w = final_weights(tmp_path / "r"), final_weights(torchrun_run)
    assert ray_w.keys() == torchrun_w.keys()
    assert max((ray_w[k] - torchrun_w[k]).abs().max().item() for k in ray_w) <= 1e-6
    initial = load_file(Path(__file__).parent.parent / "src/scirl/assets/tiny-qwen3/model.safetensors")
    assert any(not (ray_w[k] == initial[k]).all() for k in initial)  # the step did train


def test_a_ray_rank_killed_mid_save_ends_the_run_with_its_error_and_no_hang(ray_cluster, tmp_path):
    address, auth = ray_cluster
    start = time.monotonic()
    code, out, err = finish(train(train_args(tmp_path, "f", **{"trainer.launcher": "ray", "ray.address": address}),
                                  env_with(SCIRL_FAULT=FAULT, SCIRL_FAULT_RANK=1, **auth)))
    assert code == 128 + signal.SIGKILL, err
    assert err.strip().splitlines()[-1] == ("scirl: rank 1 failed (killed by SIGKILL): no error report; its output "
                                            "is above")
    assert time.monotonic() - start < DEADLINE
    assert not (tmp_path / "f" / "checkpoints" / "step_1").exists()


def test_report_folders_of_dead_launchers_are_swept(tmp_path, monkeypatch):
    """A kill -9 of the launcher skips its cleanup: the next launch removes rank-report folders whose pid is gone,
    and keeps those of live launchers."""
    import subprocess
    import tempfile

    from scirl.launch.torchrun import _sweep_report_dirs

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = tmp_path / f"scirl-ranks-{dead.pid}-abc"
    alive = tmp_path / f"scirl-ranks-{os.getpid()}-def"
    other = tmp_path / "scirl-ranks-xyz"  # an older name without a pid: left alone
    for d in (gone, alive, other):
        (d).mkdir()
        (d / "rank_0.json").write_text("{}")
    _sweep_report_dirs()
    assert not gone.exists() and alive.is_dir() and other.is_dir()
