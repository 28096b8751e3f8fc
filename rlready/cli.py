"""``rlready`` command line: one subcommand per stage of the study.

Heavy imports (torch, transformers) happen inside the subcommands, so ``rlready --help`` and argument
errors answer at once. Errors are one line on stderr with a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
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
        sub,
        "midtrain",
        "mid-train from a pre-trained model (longer context; RoPE base 1e6 at the paper's lengths)",
        needs_init=True,
    )
    _stage_parser(
        sub, "rl", "RL with verifiable rewards (GRPO, no KL, clip-higher, dynamic sampling)", needs_init=True
    )
    st = sub.add_parser(
        "study",
        help="the paper's experiment: pretrain -> midtrain -> RL for each configuration, then a report",
        description="Run (or resume) the study and write DIR/summary.json and DIR/report.md. Overrides "
        "--section.field VALUE go to every stage they apply to; --STAGE.section.field VALUE to one stage "
        "(e.g. --pretrain.train.max_steps 100).",
    )
    st.add_argument("--preset", default="tiny", help="model/recipe preset (default: tiny)")
    st.add_argument("--out", required=True, type=Path, help="study directory (resumed when it exists)")
    st.add_argument("--seeds", type=int, default=1, help="seeds per configuration (default: 1)")
    st.add_argument(
        "--configs",
        help="a named set: 'default' (the default: CE and beta=-0.25 through RL; beta=0.5, the two lam arms "
        "and beta=-1 pre-trained only), 'paper' (the paper's five through RL, and beta=-1, -0.5, 1 pre-trained "
        "only) or 'beta' (CE, beta=-0.25, beta=0.5 through RL: the multi-seed paired study); or a YAML/TOML list of "
        "{name, beta, lam_head, lam_tail, k, until}, or a mapping of such a `configs` list and `claims` for the "
        "report to check besides its own",
    )
    st.add_argument(
        "--jobs", type=int, help="configurations run in parallel (default: one per core; 1 with --launcher)"
    )
    st.add_argument(
        "--launcher",
        help='command that starts every stage as several processes, e.g. "torchrun --nproc_per_node 8"',
    )
    st.add_argument("--overwrite", action="store_true", help="replace a study with other settings in --out")
    ex = sub.add_parser(
        "export-lm-eval",
        help="write lm-evaluation-harness tasks (local JSONL) for a run's held-out problems and questions",
        description="Write lm-evaluation-harness task YAMLs backed by local JSONL: the held-out reasoning "
        "problems (exact match of '#### n', and Pass@k), the held-out knowledge questions and any GSM8K-style "
        "JSONL; then print the lm_eval command. World and evaluation settings come from --config (a run "
        f"directory or a YAML/TOML file), else from --preset and --stage. Also: {USAGE_OVERRIDES}.",
    )
    ex.add_argument("--out", required=True, type=Path, help="task folder (an earlier export is replaced)")
    ex.add_argument(
        "--config", type=Path, help="a run directory (or its config.json) or a YAML/TOML config file"
    )
    ex.add_argument("--preset", help="preset when --config is not a run directory (default: tiny)")
    ex.add_argument(
        "--stage", choices=("pretrain", "midtrain", "rl"), help="whose settings (default: the run's, else rl)"
    )
    ex.add_argument(
        "--jsonl",
        type=Path,
        action="append",
        default=[],
        help="GSM8K-style JSONL (question, answer ending in '#### n') to export as well; repeatable",
    )
    ex.add_argument("--no-world", action="store_true", help="leave out the synthetic world's tasks")
    ex.add_argument("--model", help="model directory in the printed command (default: RUN/final for a run)")
    ex.add_argument("--device", help="--device of the printed command (e.g. cpu; lm_eval's default is cuda)")
    rp = sub.add_parser("report", help="regenerate the report of one study, or compare several side by side")
    rp.add_argument("dirs", nargs="+", type=Path, help="study directories")
    rp.add_argument(
        "--out",
        type=Path,
        help="comparison file when several studies are given (default: DIR1/comparison.md)",
    )
    return parser


def _run_study(args: argparse.Namespace, extra: list[str]) -> int:
    from rlready import study

    configs = study.load_configs(args.configs) if args.configs else None
    claims = study.load_claims(args.configs) if args.configs else None
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    study.run_study(
        args.preset,
        args.out,
        seeds=args.seeds,
        configs=configs,
        jobs=args.jobs,
        launcher=args.launcher,
        extra=extra,
        overwrite=args.overwrite,
        debug="--debug" in sys.argv,
        claims=claims,
    )
    return 0


def _run_report(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise ValueError(f"unexpected arguments {' '.join(extra)}")
    from rlready.report.report import write_report

    for path in write_report(args.dirs, args.out):
        print(path)
    return 0


def _run_export(args: argparse.Namespace, extra: list[str]) -> int:
    import json

    from rlready import config, recipes
    from rlready.hf.lmeval_tasks import export_lm_eval

    overrides = config.parse_overrides(extra)
    source, model = args.config, args.model
    if source is not None and (source.is_dir() or source.suffix == ".json"):
        # A run directory: its config.json is the resolved configuration the run evaluated with.
        saved = source / "config.json" if source.is_dir() else source
        if not saved.is_file():
            what = "is a directory without config.json (not a run)" if source.is_dir() else "does not exist"
            raise config.ConfigError(f"--config {str(source)!r} {what}")
        source = saved.parent
        try:
            base = json.loads(saved.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise config.ConfigError(f"cannot read {saved}: {err}") from None
        if not isinstance(base, dict):
            raise config.ConfigError(f"{saved} does not hold a configuration")
        data = base.get("data") if isinstance(base.get("data"), dict) else {}
        if not args.no_world and data.get("path") is None and "world_version" not in data:
            # Runs recorded before world versions were: their world is not this rlready's to regenerate, and
            # the default would silently export the current world's problems as theirs.
            raise config.ConfigError(
                f"{saved} records no data.world_version: its synthetic world is older than this rlready's "
                "(export with the rlready that made the run, or --no-world with --jsonl)"
            )
        stage = args.stage or base.get("stage", "rl")
        preset = args.preset or (base.get("model") or {}).get("preset", "tiny")
        cfg = recipes.resolve(stage, preset, base={**base, "stage": stage}, overrides=overrides)
        model = model or str(source / "final")
    else:
        file_stage = config.load_file(source).get("stage") if source is not None else None
        stage = args.stage or file_stage or "rl"
        cfg = recipes.resolve(stage, args.preset or "tiny", file=source, overrides=overrides)
    result = export_lm_eval(args.out, cfg, jsonl=args.jsonl, world=not args.no_world)
    print(f"wrote {len(result.tasks)} tasks to {result.out}: {', '.join(result.tasks)}")
    print(result.command(model, device=args.device))
    return 0


def _run_stage(args: argparse.Namespace, extra: list[str]) -> int:
    from rlready import config, recipes
    from rlready.train.loop import die_with_parent

    die_with_parent()

    overrides = config.parse_overrides(extra)
    if args.init is not None:
        overrides.append(("model.init", args.init))
    cfg = recipes.resolve(args.command, args.preset, file=args.config, overrides=overrides)
    if args.command == "rl":
        from rlready.train import rl as stage
    else:
        from rlready.train import lm as stage

    result = stage.run(cfg, args.out, overwrite=args.overwrite)
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
    previous = _interrupt_during_start_up() if args.command not in ("report", "export-lm-eval") else {}
    try:
        if args.command in ("pretrain", "midtrain", "rl"):
            return _run_stage(args, extra)
        if args.command == "study":
            return _run_study(args, extra)
        if args.command == "report":
            return _run_report(args, extra)
        if args.command == "export-lm-eval":
            return _run_export(args, extra)
        parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse rejects it first
    except KeyboardInterrupt:
        print("rlready: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line per error; the traceback only with --debug
        if debug:
            raise
        from rlready.errors import Interrupted

        if isinstance(err, Interrupted):
            print(f"rlready: {err}", file=sys.stderr)
            return EXIT_INTERRUPTED
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        known = isinstance(err, (ValueError, OSError, RuntimeError))
        prefix = "error" if known else f"internal error ({type(err).__name__})"
        print(f"rlready: {prefix}: {message}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _interrupt_during_start_up() -> dict[int, object]:
    """SIGTERM/SIGINT before a stage or the study takes over its signals (importing torch and transformers
    alone takes seconds) end the command like any interruption: exit 3 and a message. Returns the handlers
    to put back."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    from rlready.errors import interrupted

    raised = []

    def handle(signum: int, _frame: object) -> None:
        if not raised:  # once: a second signal must not interrupt the first one's clean-up
            raised.append(signum)
            raise interrupted(signum, "start-up")

    return {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}


if __name__ == "__main__":
    sys.exit(main())
