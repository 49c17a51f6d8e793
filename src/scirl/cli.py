"""The `scirl` command line: `scirl train [RECIPE.yaml] [key=value ...]`. User errors exit 2 with one line."""

from __future__ import annotations

import argparse
import sys

from scirl.errors import ScirlError

USAGE_TRAIN = """scirl train [RECIPE.yaml] [key=value ...]

Train with a YAML recipe (default: the bundled tiny recipe, recipes/tiny_grpo.yaml) and dotted overrides,
e.g. `scirl train recipes/tiny_grpo.yaml trainer.total_steps=20 algorithm.clip_ratio_high=0.28`.
The run folder is <trainer.output_dir>/<trainer.run_name>/; `trainer.resume=auto` continues from its latest
checkpoint. `scirl config` prints every key with its default."""


def _split_args(args: list[str]) -> tuple[str | None, list[str]]:
    recipe, overrides = None, []
    for i, arg in enumerate(args):
        if i == 0 and "=" not in arg:
            recipe = arg
        else:
            overrides.append(arg)
    return recipe, overrides


def cmd_train(args: list[str]) -> int:
    from scirl.config import load_config

    recipe, overrides = _split_args(args)
    cfg = load_config(recipe, overrides)
    from scirl.train.loop import run_training  # heavy imports (torch, transformers) only once the config is valid

    run_training(cfg)
    return 0


def cmd_config(args: list[str]) -> int:
    import yaml

    from scirl.config import load_config, to_dict

    recipe, overrides = _split_args(args)
    print(yaml.safe_dump(to_dict(load_config(recipe, overrides)), sort_keys=False), end="")
    return 0


COMMANDS = {"train": (cmd_train, USAGE_TRAIN), "config": (cmd_config, "scirl config [RECIPE.yaml] [key=value ...]: "
                                                         "print the resolved config")}


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
    try:
        return func(rest)
    except ScirlError as e:
        print(f"scirl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scirl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
