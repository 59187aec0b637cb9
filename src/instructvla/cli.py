"""The `instructvla` command: a thin dispatcher from subcommands to draccus-configured entry points.

Each subcommand names (module, config dataclass, function). The module is imported only when the subcommand runs,
so `instructvla --help` is instant and a heavy optional dependency only matters to the command that needs it.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

import draccus

# subcommand -> (module, config class, entry function, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "demo": ("instructvla.demo", "DemoConfig", "demo", "collect -> stage 0/1/2 -> eval -> report, end to end"),
    "collect": ("instructvla.sim.collect", "CollectConfig", "collect", "collect scripted demos into a LeRobot v3 dataset"),
    "tasks": ("instructvla.sim.tasks", "ListTasksConfig", "list_tasks", "list every simulator task and instruct-suite task"),
    "train": ("instructvla.train.trainer", "TrainConfig", "train", "train stage 0 / 1 / 2 (torchrun for several processes)"),
    "eval": ("instructvla.eval.evaluate", "EvalConfig", "evaluate", "closed-loop evaluation + VQA metrics + HTML report"),
    "serve": ("instructvla.serve.server", "ServeConfig", "serve", "serve a policy over openpi's websocket protocol"),
    "chat": ("instructvla.serve.chat", "ChatConfig", "chat", "ask a policy questions about an image"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: instructvla <command> [--option=value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {spec[3]}" for name, spec in COMMANDS.items()]
    lines += ["", "Run `instructvla <command> --help` for a command's options."]
    return "\n".join(lines)


def _normalize_flags(args: list[str], config_cls: type) -> list[str]:
    """Accept `--a-b` for `--a_b`, and a bare `--flag` for a boolean field as `--flag=true`."""
    import dataclasses
    import typing

    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # unresolvable annotations: leave the flags as given
        hints = {}
    bools = {f.name for f in dataclasses.fields(config_cls) if hints.get(f.name) in (bool, bool | None)}
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            name = name.replace("-", "_")
            nxt = args[i + 1] if i + 1 < len(args) else None
            if not eq and name in bools and (nxt is None or nxt.startswith("--")):
                eq, value = "=", "true"
            arg = f"--{name}{eq}{value}"
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `instructvla` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        import difflib

        hint = difflib.get_close_matches(name, COMMANDS, n=1)
        print(f"instructvla: unknown command {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""), file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    module_name, config_name, func_name, _ = COMMANDS[name]
    module = importlib.import_module(module_name)
    config_cls = getattr(module, config_name)
    cfg = draccus.parse(config_class=config_cls, args=_normalize_flags(rest, config_cls), prog=f"instructvla {name}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = getattr(module, func_name)(cfg)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
