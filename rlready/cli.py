"""``rlready`` command line: one subcommand per stage of the study.

Heavy imports (torch, transformers) happen inside the subcommands, so ``rlready --help`` and argument
errors answer at once. Errors are one line on stderr with a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_ERROR = 2
EXIT_INTERRUPTED = 3

USAGE_OVERRIDES = "any config field as --section.field VALUE (e.g. --loss.beta -0.25 --train.max_steps 100)"


def _stage_parser(sub: argparse._SubParsersAction, name: str, help_text: str, *, needs_init: bool) -> None:
    p = sub.add_parser(name, help=help_text, description=f"{help_text}. Also: {USAGE_OVERRIDES}.")
    p.add_argument("--preset", default="tiny", help="model/recipe preset (default: tiny)")
    p.add_argument("--out", required=True, type=Path, help="run directory (resumed when it exists)")
    p.add_argument("--init", required=needs_init, help="Hugging Face model directory to start from")
    p.add_argument("--config", help="YAML or TOML file with config sections")
    p.add_argument("--overwrite", action="store_true", help="replace a run of another configuration in --out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlready",
        description="RL-ready pre-training: the reward-shaped next-token objective and the pretrain -> "
        "midtrain -> RL study around it.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _stage_parser(sub, "pretrain", "pre-train a Qwen3 model with the shaped objective", needs_init=False)
    _stage_parser(
        sub, "midtrain", "mid-train from a pre-trained model (longer context, RoPE 1e6)", needs_init=True
    )
    return parser


def _run_stage(args: argparse.Namespace, extra: list[str]) -> int:
    from rlready import config

    overrides = config.parse_overrides(extra)
    if args.init is not None:
        overrides.append(("model.init", args.init))
    cfg = config.resolve(args.command, args.preset, file=args.config, overrides=overrides)
    from rlready.train import lm

    result = lm.run(cfg, args.out, overwrite=args.overwrite)
    if result:
        summary = ", ".join(f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float))
        print(f"{args.command} done: {args.out} ({summary})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command in ("pretrain", "midtrain"):
            return _run_stage(args, extra)
        parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse rejects it first
    except KeyboardInterrupt:
        print("rlready: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line per error; the traceback only with --debug
        if debug:
            raise
        from rlready.train.lm import Interrupted

        if isinstance(err, Interrupted):
            print(f"rlready: {err}", file=sys.stderr)
            return EXIT_INTERRUPTED
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        known = isinstance(err, (ValueError, OSError, RuntimeError))
        prefix = "error" if known else f"internal error ({type(err).__name__})"
        print(f"rlready: {prefix}: {message}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
