"""The one-click experiment runners (``run_*_experiment.py``): script steps run in order.

Each step is a pipeline script run as a subprocess of the same Python interpreter, so a step
gets a fresh process (its own accelerator, memory freed between steps) exactly as if the user had
typed its command. The runner passes ``--root`` to every step and, per step, ``--config`` and
``--set`` overrides (flags ``--<step>-config`` and ``--<step>-set``); ``--skip-<step>`` leaves a step
out (e.g. ``--skip-train`` evaluates an existing checkpoint). The first step that fails stops the
run: the message names the step, its command and its exit code, and the runner exits with that
code. The steps' own configs connect them (e.g. the training config's output folder is the
evaluation config's checkpoint), so an override that moves one output must move the other too.

Before the first step runs, every step's config is parsed (with its overrides and ``--root``) and
every declared :class:`Link` is checked: the path a later step reads must be the one an earlier
step writes. A config error or a broken link stops the run at once (exit code 2), naming both keys
and the ``--<step>-set`` that would connect them, instead of after hours of training.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from qwen_forensics.config.loading import (DEFAULT_ROOT, ROOT_ENV_VAR, ConfigError, input_paths, parse_config,
                                           read_config_file)

__all__ = ["Link", "Step", "StepFailed", "build_parser", "check_links", "experiment_main", "run_steps",
           "step_commands"]


@dataclass(frozen=True)
class Step:
    name: str                   # short name used in the flags: --<name>-set, --<name>-config, --skip-<name>
    script: Path                # the pipeline script
    what: str                   # one line for the help text and the progress messages
    config_class: type | None = None    # the script's config dataclass (for the link check)
    default_config: Path | None = None  # the config the script reads without --config


@dataclass(frozen=True)
class Link:
    """A path that step ``writer`` writes (config key ``written``) and step ``reader`` reads (``read``).

    ``written`` may instead be a function of the writer's config, for outputs that are not one key.
    """
    what: str
    writer: str
    written: str | Callable[[Any], str]
    reader: str
    read: str


def _value(cfg: Any, key: str | Callable[[Any], str]) -> str:
    return key(cfg) if callable(key) else getattr(cfg, key)


class StepFailed(RuntimeError):
    def __init__(self, step: Step, number: int, total: int, returncode: int, command: list[str], not_run: list[str]):
        self.step, self.returncode, self.command, self.not_run = step, returncode, command, not_run
        after = f"; not run: {', '.join(not_run)}" if not_run else ""
        super().__init__(f"step {number}/{total} '{step.name}' ({step.what}) failed with exit code {returncode}"
                         f"{after}\n  command: {shlex.join(command)}")


def build_parser(description: str, steps: Sequence[Step]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None,
                        help=f"relocate every {DEFAULT_ROOT} path of every step to this folder "
                             f"(also: environment variable {ROOT_ENV_VAR})")
    for step in steps:
        parser.add_argument(f"--skip-{step.name}", action="store_true", help=f"do not run the {step.name} step")
        parser.add_argument(f"--{step.name}-config", default=None, metavar="FILE",
                            help=f"config of the {step.name} step (default: the script's shipped config)")
        parser.add_argument(f"--{step.name}-set", action="append", default=[], metavar="KEY=VALUE",
                            help=f"--set override for the {step.name} step ({step.what}); repeatable")
    return parser


def step_commands(steps: Sequence[Step], args: argparse.Namespace) -> list[tuple[Step, list[str]]]:
    """The command of every step that is not skipped, in order."""
    commands = []
    for step in steps:
        attr = step.name.replace("-", "_")
        if getattr(args, f"skip_{attr}"):
            continue
        command = [sys.executable, str(step.script)]
        config = getattr(args, f"{attr}_config")
        if config:
            command += ["--config", config]
        if args.root:
            command += ["--root", args.root]
        for override in getattr(args, f"{attr}_set"):
            command += ["--set", override]
        commands.append((step, command))
    return commands


def run_steps(commands: Sequence[tuple[Step, list[str]]]) -> None:
    """Run the commands in order; raise ``StepFailed`` at the first nonzero exit code."""
    total = len(commands)
    for number, (step, command) in enumerate(commands, start=1):
        print(f"[{number}/{total}] {step.name}: {step.what}\n  $ {shlex.join(command)}", flush=True)
        returncode = subprocess.run(command).returncode
        if returncode != 0:
            raise StepFailed(step, number, total, returncode, command, [s.name for s, _ in commands[number:]])
        print(f"[{number}/{total}] {step.name}: done", flush=True)


def _step_config(step: Step, args: argparse.Namespace):
    attr = step.name.replace("-", "_")
    path = Path(getattr(args, f"{attr}_config") or step.default_config)
    return parse_config(step.config_class, read_config_file(path), overrides=getattr(args, f"{attr}_set"),
                        root=args.root, base_dir=path.resolve().parent)


def check_links(steps: Sequence[Step], links: Sequence[Link], args: argparse.Namespace) -> list[str]:
    """Problems found before anything runs: configs that do not parse, links whose two ends differ,
    and inputs that do not exist and that no earlier step writes.

    Only steps that will run are checked, and a link only when both its steps run (with
    ``--skip-train`` the evaluation reads an existing checkpoint, which it checks itself).
    """
    running = {s.name: s for s, _ in step_commands(steps, args)}
    configs, problems = {}, []
    for name, step in running.items():
        if step.config_class is None:
            continue
        try:
            configs[name] = _step_config(step, args)
        except ConfigError as err:
            problems.append(f"step '{name}': config error: {err}")
    produced: dict[str, set[str]] = {name: set() for name in configs}
    for link in links:
        if link.writer not in configs or link.reader not in configs:
            continue
        produced[link.reader].add(link.read)
        written, read = _value(configs[link.writer], link.written), _value(configs[link.reader], link.read)
        if Path(written) != Path(read):
            problems.append(
                f"step '{link.reader}' reads {link.read} = {read}, but step '{link.writer}' writes {link.what} to "
                f"{written}; pass --{link.reader}-set {link.read}={written} (or make the two configs agree)")
    for name, cfg in configs.items():
        for key, path in input_paths(cfg).items():
            if key not in produced[name] and not Path(path).exists():
                problems.append(f"step '{name}': {key} = {path} does not exist and no earlier step writes it")
    return problems


def experiment_main(description: str, steps: Sequence[Step], argv: list[str] | None = None,
                    links: Sequence[Link] = ()) -> int:
    """Parse the runner flags, check the steps' configs and links, run the steps; returns the exit code."""
    args = build_parser(description, steps).parse_args(argv)
    commands = step_commands(steps, args)
    if not commands:
        print("every step was skipped; nothing to run", file=sys.stderr)
        return 2
    problems = check_links(steps, links, args)
    if problems:
        print("experiment not started: the steps' configs do not fit together:\n  " + "\n  ".join(problems),
              file=sys.stderr, flush=True)
        return 2
    try:
        run_steps(commands)
    except StepFailed as failure:
        print(f"experiment stopped: {failure}", file=sys.stderr, flush=True)
        return failure.returncode if failure.returncode > 0 else 1
    print(f"all {len(commands)} step(s) finished: {', '.join(step.name for step, _ in commands)}", flush=True)
    return 0
