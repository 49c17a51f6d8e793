"""The `scirl` command line: `scirl train [RECIPE.yaml] [key=value ...]`, `sft`, `config`, `eval`, `grade`, `serve`,
`export`, `merge`, `report`, `card`, `sandbox`.

User errors exit 2 with one line."""

from __future__ import annotations

import argparse
import errno
import sys

from scirl.errors import ScirlError

USAGE_TRAIN = """scirl train [RECIPE.yaml] [key=value ...]

Train with a YAML recipe (default: the bundled tiny recipe, recipes/tiny_grpo.yaml) and dotted overrides,
e.g. `scirl train recipes/tiny_grpo.yaml trainer.total_steps=20 algorithm.clip_ratio_high=0.28`.
The run folder is <trainer.output_dir>/<trainer.run_name>/. Running the same command again continues the run
from its latest checkpoint (trainer.resume=auto, the default; a finished run says so and does nothing);
trainer.resume=disable insists on a new run, trainer.resume=PATH continues from a checkpoint folder, and
trainer.overwrite=true moves an existing run folder aside and starts over. SIGTERM or Ctrl-C checkpoint at the
next step boundary and exit 143 / 130 (a second signal exits at once). `scirl config` prints every key.
trainer.nproc_per_node=N starts N processes with torchrun (one machine); trainer.launcher=ray with trainer.nnodes
and ray.address=auto runs across a Ray cluster; `torchrun ... -m scirl train ...` by hand works too."""


def _split_args(args: list[str]) -> tuple[str | None, list[str]]:
    recipe, overrides = None, []
    for i, arg in enumerate(args):
        if i == 0 and "=" not in arg:
            recipe = arg
        else:
            overrides.append(arg)
    return recipe, overrides


def cmd_train(args: list[str]) -> int:
    from scirl.launch import die_with_launcher, is_rank, launch_if_needed

    if is_rank():
        die_with_launcher()
    from scirl.config import load_config

    recipe, overrides = _split_args(args)
    cfg = load_config(recipe, overrides)  # checked before any process starts: a bad key is one line, exit 2
    from scirl.dist import check_divisible, env_world_size

    world = env_world_size() if is_rank() else cfg.trainer.nproc_per_node * cfg.trainer.nnodes
    check_divisible(cfg.data.train_batch_size, cfg.actor.ppo_mini_batch_size, world)  # before a rank starts
    code = launch_if_needed(cfg, args)  # trainer.nproc_per_node > 1 or trainer.launcher=ray: start the ranks
    if code is not None:
        return code
    from scirl.train.loop import run_training  # heavy imports (torch, transformers) only once the config is valid

    run_training(cfg)
    return 0


USAGE_SFT = """scirl sft RECIPE.yaml [key=value ...]

Supervised fine-tuning on conversations, e.g. `scirl sft recipes/sft_agentic.yaml sft.train=data/sft.jsonl`.
sft.train is a local .json / .jsonl / .parquet file of rows with `messages` (the chat format: system / user /
assistant / tool turns, assistant `tool_calls`) and optional `tools` (JSON schemas rendered by the chat template);
the loss is on the assistant tokens only. The run is sft.epochs x ceil(rows / sft.batch_size) optimizer steps
(sft.max_steps > 0 instead), conversations packed padding-free up to sft.micro_batch_tokens per forward.
Run folder, checkpoints (checkpoints/step_N/model/ is the fine-tuned model), resume, trainer.nproc_per_node (FSDP2)
and model.lora work as in `scirl train`; sft.val adds a validation loss, sft.rollout_eval=true the rollout
evaluation of `scirl train` on data.val (reward.name, rollout.agent tools) before and after. `scirl config
RECIPE.yaml` prints every key."""


def cmd_sft(args: list[str]) -> int:
    from scirl.launch import die_with_launcher, is_rank, launch_if_needed

    if is_rank():
        die_with_launcher()
    from scirl.config import load_config

    recipe, overrides = _split_args(args)
    if recipe is None:
        raise ScirlError("scirl sft needs a recipe: scirl sft RECIPE.yaml [key=value ...] (e.g. "
                         "recipes/sft_agentic.yaml)")
    cfg = load_config(recipe, overrides)  # checked before any process starts
    from scirl.config_sft import check_sft_run

    check_sft_run(cfg)
    code = launch_if_needed(cfg, args, "sft")
    if code is not None:
        return code
    from scirl.sft.loop import run_sft  # heavy imports only once the config is valid

    run_sft(cfg)
    return 0


def cmd_config(args: list[str]) -> int:
    import yaml

    from scirl.config import load_config, to_dict

    recipe, overrides = _split_args(args)
    print(yaml.safe_dump(to_dict(load_config(recipe, overrides)), sort_keys=False), end="")
    return 0


USAGE_GRADE = """scirl grade --reward NAME INPUT.jsonl [-o OUT.jsonl] [--workers N] [--timeout S] [--info JSON]

Score a JSONL file of {"response": ..., "answer": ...} rows with a registered reward (boxed_numeric, mcq, tcr,
overlong, ...) or your own (NAME = module:function or path/to/file.py:function). Other row fields (choices, num_turns, subparts, length, ...) go into the reward's info (on top of
--info, a JSON object) and into the sample's metadata. Writes every good row with score/pred/components to OUT
(default INPUT.graded.jsonl) and prints accuracy, mean score, timeouts, errors and throughput. Malformed rows are
reported with their line number on stderr and skipped; a file with no gradable row exits 2. --workers defaults to the CPU count (0 = inline, no
timeouts); --timeout is per reward call in seconds (default 10); a call past it scores 0."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises ScirlError (one line, exit 2) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ScirlError(f"{self.prog}: {message}")


def cmd_grade(args: list[str]) -> int:
    import json

    from scirl.rewards.grade import grade_file

    parser = _Parser(prog="scirl grade", add_help=False)
    parser.add_argument("input")
    parser.add_argument("--reward", required=True)
    parser.add_argument("-o", "--output", default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--info", default=None)
    ns = parser.parse_args(args)
    info = None
    if ns.info is not None:
        try:
            info = json.loads(ns.info)
        except ValueError as e:
            raise ScirlError(f"grade: --info is not valid JSON ({e})") from None
        if not isinstance(info, dict):
            raise ScirlError("grade: --info must be a JSON object, e.g. '{\"rel_tol\": 1e-3}'")
    grade_file(ns.reward, ns.input, ns.output, workers=ns.workers, timeout=ns.timeout, info=info)
    return 0


def cmd_eval(args: list[str]) -> int:
    from scirl.eval.command import main as eval_main

    return eval_main(args)


def cmd_serve(args: list[str]) -> int:
    from scirl.serve import main as serve_main

    return serve_main(args)


def cmd_export(args: list[str]) -> int:
    from scirl.export.command import export_main

    return export_main(args)


def cmd_merge(args: list[str]) -> int:
    from scirl.export.command import merge_main

    return merge_main(args)


def cmd_report(args: list[str]) -> int:
    from scirl.publish.report import report_main

    return report_main(args)


def cmd_card(args: list[str]) -> int:
    from scirl.publish.card import card_main

    return card_main(args)


USAGE_CARD = """scirl card RUN [-o README.md]

Write a Hugging Face model card for a run folder (default RUN/README.md; every run writes one at its end): YAML
header (base model, licence, datasets, tags, model-index with the final and best validation metrics) and the
summary, pipeline, hyperparameters, datasets, results (before / best / final), curves, loading snippet, intended
use and licence sections. Reads the run folder only; never uses the network."""


def cmd_sandbox(args: list[str]) -> int:
    from scirl.sandbox.command import sandbox_main

    return sandbox_main(args)


def _serve_usage() -> str:
    from scirl.serve import help_text  # light: torch and transformers load only when serving

    return help_text()  # the full argparse help: `scirl serve --help` lists every flag


def _export_usage(which: str) -> str:
    from scirl.export import command  # light: torch loads only when a command runs

    return getattr(command, f"USAGE_{which}")


def _eval_usage() -> str:
    from scirl.eval.command import USAGE

    return USAGE


def _report_usage() -> str:
    from scirl.publish.report import USAGE  # light: matplotlib loads only when a report is built

    return USAGE


def _sandbox_usage() -> str:
    from scirl.sandbox.command import USAGE  # light: no sandbox starts for --help

    return USAGE


COMMANDS = {"train": (cmd_train, USAGE_TRAIN), "sft": (cmd_sft, USAGE_SFT),
            "config": (cmd_config, "scirl config [RECIPE.yaml] [key=value ...]: print the resolved config"),
            "grade": (cmd_grade, USAGE_GRADE), "eval": (cmd_eval, _eval_usage()), "serve": (cmd_serve, _serve_usage()),
            "export": (cmd_export, _export_usage("EXPORT")), "merge": (cmd_merge, _export_usage("MERGE")),
            "report": (cmd_report, _report_usage()), "card": (cmd_card, USAGE_CARD),
            "sandbox": (cmd_sandbox, _sandbox_usage())}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="scirl", description="RL post-training for science and math reasoning.")
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        print("\ncommands:\n" + "\n".join(f"  {name}: {usage.splitlines()[0]}" for name, (_, usage) in COMMANDS.items()))
        return 0
    ns = parser.parse_args(argv[:1])
    func, usage = COMMANDS[ns.command]
    rest = argv[1:]
    if rest[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    code, error = _run(func, rest)
    return _as_rank(code, error)


def _run(func, rest: list[str]) -> tuple[int, str]:
    """Run a command: its exit status and its one-line error ("" when none)."""
    try:
        from scirl.progress import check_env

        check_env()  # a bad SCIRL_PROGRESS(_INTERVAL) is one line now, not after a model has loaded
        return func(rest), ""
    except ScirlError as e:
        code = getattr(e, "exit_code", 2)  # a run stopped by a signal exits 128 + signum
        print(f"scirl: {'error: ' if code == 2 else ''}{e}", file=sys.stderr)
        return code, str(e)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            _as_rank(1, f"{type(e).__name__}: {e}")
            raise
        print(f"scirl: error: {e.strerror} writing {e.filename or 'a file'}", file=sys.stderr)
        return 1, f"{e.strerror} writing {e.filename or 'a file'}"
    except KeyboardInterrupt:
        print("scirl: interrupted", file=sys.stderr)
        return 130, "interrupted"
    except BaseException as e:  # a bug: the traceback is printed as always; the launcher learns the last line
        if not isinstance(e, SystemExit):
            _as_rank(1, f"{type(e).__name__}: {e}")
        raise


def _as_rank(code: int, error: str) -> int:
    """In a rank started by scirl's launcher: report the status and error to it (scirl.launch.rank_report). A rank
    stopped by a signal then exits 0: torchrun's agent would otherwise signal the ranks still checkpointing, which
    they take for a second signal; the launcher exits 128 + signal itself."""
    import os

    if "RANK" not in os.environ or "SCIRL_RANK_REPORT_DIR" not in os.environ:
        return code
    from scirl.launch.rank_report import write_report

    write_report(code, error)
    return 0 if code > 128 and os.environ.get("SCIRL_LAUNCHER_PID") else code


if __name__ == "__main__":
    sys.exit(main())
