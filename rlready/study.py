"""``rlready study``: the paper's experiment in one command (docs/method.md §5.4).

For every configuration and seed: pre-train -> mid-train -> RL (or up to the configuration's ``until``), each
stage a ``rlready`` subprocess writing its own run directory (so every stage resumes, or is skipped when
finished, exactly like a hand-run stage), then ``summary.json`` and ``report.md`` with figures. Independent
configurations run in parallel processes when cores allow, with the cores split between them.
``--launcher`` (e.g. ``torchrun --nproc_per_node 8``) starts every stage as several processes, for GPU nodes.

Layout::

    DIR/study.json                     the study's own settings (a re-run must match them)
    DIR/runs/<name>-s<seed>/pretrain   one run directory per stage (config.json, metrics.jsonl, eval.json, final/)
    DIR/runs/<name>-s<seed>/midtrain
    DIR/runs/<name>-s<seed>/rl
    DIR/summary.json, DIR/report.md, DIR/figures/*.png

The shaped objective is used in pre-training and mid-training (the configurations shape the prior); RL is
the same GRPO for every configuration, so differences after RL come from the prior.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rlready import recipes
from rlready.config import LOSS_KNOBS, SCHEDULED_KNOBS, ConfigError, LossConfig, parse_k
from rlready.data.loader import check_document_attention
from rlready.errors import Interrupted
from rlready.train import rundir
from rlready.train.rundir import is_finished

STAGE_ORDER = ("pretrain", "midtrain", "rl")


@dataclass(frozen=True)
class StudyConfig:
    """One configuration compared in the study (docs/method.md §5.4: the five defaults below): a name and the
    loss knobs its pre- and mid-training use (``loss.chunk_size`` is not one: it comes from the overrides)."""

    name: str
    loss: LossConfig = field(default_factory=LossConfig)
    until: str = "rl"  # the last stage this configuration runs: "pretrain" for a pre-training-only arm

    def __post_init__(self) -> None:
        if self.until not in STAGE_ORDER:
            raise ConfigError(
                f"configuration {self.name!r}: until must be one of {STAGE_ORDER}, got {self.until!r}"
            )

    @property
    def stages(self) -> tuple[str, ...]:
        return STAGE_ORDER[: STAGE_ORDER.index(self.until) + 1]

    def to_dict(self) -> dict[str, Any]:
        """``{name, beta, lam_head, lam_tail, k}`` (and ``until`` when it is not ``"rl"``), as study.json and
        summary.json record it."""
        return {
            "name": self.name,
            **self.loss.knobs(),
            **({"until": self.until} if self.until != "rl" else {}),
        }


# The report's claims (rlready/report/claims.py) are generated from the configurations' knobs, not names.
# The multi-seed study of the entropy knob (README, "Eight seeds, paired"): CE and the paper's two beta values,
# through RL, compared seed by seed.
BETA_CONFIGS = (
    StudyConfig("CE", LossConfig(k=10)),
    StudyConfig("beta=-0.25", LossConfig(beta="-0.25", k=10)),
    StudyConfig("beta=0.5", LossConfig(beta="0.5", k=10)),
)
# The paper's local-entropy arms. Its tail penalty is -0.1; at the fixed point that cuts the tail by at most
# ~7% (docs/method.md §10), within seed noise, so the arm penalises ten times harder to show what the knob does.
LAM_CONFIGS = (
    StudyConfig("lam_tail=-1", LossConfig(lam_tail="-1", k=10)),
    StudyConfig("lam_head=0.1", LossConfig(lam_head="0.1", k=10)),
)
# The dose-response of beta (docs/method.md §10): pre-training only, where entropy is measured.
DOSE_CONFIGS = (
    StudyConfig("beta=-1", LossConfig(beta="-1", k=10), until="pretrain"),
    StudyConfig("beta=-0.5", LossConfig(beta="-0.5", k=10), until="pretrain"),
    StudyConfig("beta=1", LossConfig(beta="1", k=10), until="pretrain"),
)
# The paper's five configurations through RL, and the dose-response.
PAPER_CONFIGS = (*BETA_CONFIGS, *LAM_CONFIGS, *DOSE_CONFIGS)
# The default study, sized to take at most 15 minutes on 2 cores (BENCHMARKS.md, "The tiny study"): CE and
# beta=-0.25, the paper's headline RL comparison, through RL; beta=0.5, the lam arms (whose claims test what
# their knobs move after pre-training) and beta=-1 pre-trained only, so that held-out entropy is measured at
# four beta values. Three rounds of pre-training, then both chains' mid-training and RL side by side; a
# further pre-trained arm costs a round of pre-training, a further chain about one mid-training
# (docs/method.md §5.4). `--configs paper` takes all five through RL.
DEFAULT_CONFIGS = (
    *BETA_CONFIGS[:2],
    replace(BETA_CONFIGS[2], until="pretrain"),
    *(replace(c, until="pretrain") for c in LAM_CONFIGS),
    DOSE_CONFIGS[0],
)
# Named configuration sets for --configs (a file path is read instead).
CONFIG_SETS = {"default": DEFAULT_CONFIGS, "paper": PAPER_CONFIGS, "beta": BETA_CONFIGS}
# k = 10 of V = 2048: the head of the tiny cross-entropy model holds about 0.9 of the mass there (BENCHMARKS.md,
# "Preset sizing notes"), so the tail the lam knobs act on is not empty (docs/method.md §10). Only the lam
# knobs train with k; every configuration takes the same k so that their tail mass and within-head entropy
# (eval.json) are measured over the same head.
_FIELDS = ("name", *LOSS_KNOBS, "until")


def load_configs(path: str | Path) -> list[StudyConfig]:
    """A named set of ``CONFIG_SETS``, or a YAML/TOML list of ``{name, beta, lam_head, lam_tail, k}`` (TOML:
    ``[[configs]]`` tables)."""
    named = _named_set(path)
    return list(named) if named is not None else _load_study_file(path)[0]


def load_claims(path: str | Path) -> list[Any]:
    """The claims a configurations file adds (``claims:`` next to ``configs:``; rlready/report/claims.py);
    none for a named set."""
    return [] if _named_set(path) is not None else _load_study_file(path)[1]


def _named_set(path: str | Path) -> tuple[StudyConfig, ...] | None:
    """The configurations ``path`` names in ``CONFIG_SETS``, unless a file of that name exists (read instead)."""
    return CONFIG_SETS.get(str(path)) if not Path(path).exists() else None


def _load_study_file(path: str | Path) -> tuple[list[StudyConfig], list[Any]]:
    from rlready.config import load_file
    from rlready.report.claims import parse_claims

    p = Path(path)
    claims: list[Any] = []
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        if not p.is_file():
            raise ConfigError(f"configs file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"malformed YAML in {str(p)!r}: {str(err).splitlines()[0]}") from None
        if isinstance(data, dict):
            claims = parse_claims(data.get("claims"), str(p))
            data = data.get("configs")
    else:
        mapping = load_file(p)
        claims = parse_claims(mapping.get("claims"), str(p))
        data = mapping.get("configs")
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{str(p)!r} must hold a non-empty list of configurations ({', '.join(_FIELDS)})")
    out: list[StudyConfig] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"configuration {i} in {str(p)!r} must be a mapping with a name")
        unknown = set(item) - set(_FIELDS)
        if unknown:
            raise ConfigError(f"configuration {item['name']!r}: unknown fields {sorted(unknown)}")
        name = str(item["name"])
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"configuration name {name!r} must be a plain, non-empty file name")
        knobs = {key: item[key] for key in SCHEDULED_KNOBS if key in item}
        try:
            # k: a count (int) or a fraction of the vocabulary (float in (0, 1)), docs/method.md §1
            loss = LossConfig(**knobs, k=parse_k("k", item.get("k", 100)))
        except ConfigError as err:
            raise ConfigError(f"configuration {name!r}: {err}") from None
        out.append(StudyConfig(name, loss, str(item.get("until", "rl"))))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"configuration names must be unique, got {names}")
    return out, claims


@dataclass
class Job:
    config: StudyConfig
    seed: int
    root: Path

    @property
    def label(self) -> str:
        return f"{self.config.name} s{self.seed}"

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def init(self, stage: str) -> str:
        """What ``stage`` starts from (``--init``): the model its previous stage exported."""
        return str(self.stage_dir(STAGE_ORDER[STAGE_ORDER.index(stage) - 1]) / "final")

    def command(
        self, stage: str, preset: str, extra: list[str], launcher: list[str] | None = None
    ) -> list[str]:
        """The stage's command line; ``launcher`` (e.g. ``torchrun --nproc_per_node 8``) starts it as several
        processes, which share the global batch (LM stages) or the step's prompt groups (RL)."""
        start = launcher or [sys.executable]
        cmd = [
            *start,
            "-m",
            "rlready.cli",
            stage,
            "--preset",
            preset,
            "--out",
            str(self.stage_dir(stage)),
        ]
        if stage != "pretrain":
            cmd += ["--init", self.init(stage)]
        for key, value in self.overrides(stage, extra):
            cmd += [f"--{key}", value]
        return cmd

    def overrides(self, stage: str, extra: list[str]) -> list[tuple[str, str]]:
        """The settings the stage's command gives on top of the preset's recipe: the seed, line-per-update
        progress, the configuration's loss knobs (LM stages) and the study's overrides for this stage."""
        loss = self.config.loss.to_overrides() if stage != "rl" else []
        return [("seed", str(self.seed)), ("log.progress", "lines"), *loss, *stage_overrides(extra, stage)]


class Progress:
    """Which stage of which configuration runs, and the overall ETA from finished stage times."""

    def __init__(self, total: int, reused: set[Path] | None = None, parallel: int = 1) -> None:
        self.reused = set(reused or ())  # stage directories an earlier run finished: skipped, not timed
        self.total, self.t0 = total, time.perf_counter()
        self.parallel = parallel  # stages running side by side, for the ETA
        self.durations: list[float] = []
        self.lock = threading.Lock()

    def line(self, message: str) -> None:
        with self.lock:
            print(f"[{self.done}/{self.total} stages] {message}", flush=True)

    @property
    def done(self) -> int:
        """Stages finished: by an earlier run (reused) or by this one (timed)."""
        return len(self.reused) + len(self.durations)

    def finished(self, seconds: float) -> None:
        with self.lock:
            self.durations.append(seconds)

    def reuse(self, stage_dir: Path) -> None:
        with self.lock:
            self.reused.add(stage_dir)

    def eta(self) -> str:
        if not self.durations:
            return "ETA unknown"
        left = (self.total - self.done) * (sum(self.durations) / len(self.durations)) / max(self.parallel, 1)
        return f"ETA {left / 60:.1f} min"


def usable_cores() -> int:
    """The CPUs this process may run on (``taskset``, cgroup cpusets), not every CPU of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def stage_threads(cores: int, parallel: int, runnable: int) -> int:
    """Threads for a stage: the cores split over the stages that can run side by side now, so the machine is
    never oversubscribed (OpenMP threads that outnumber cores slow every process down several times) and a
    stage that runs alone at the end gets every core."""
    return max(1, cores // max(1, min(parallel, runnable)))


class Stages:
    """The stage processes running now, and the signal that stops the study.

    SIGTERM/SIGINT to the study are forwarded to every running stage (each in its own session, so a
    terminal's Ctrl-C reaches it once, through here), which checkpoints and exits; no new stage starts. A
    stage also ends if the study dies without forwarding anything (SIGKILL): ``RLREADY_PARENT_PID`` makes it
    ask the kernel for SIGTERM when its parent goes (``rlready.train.loop.die_with_parent``).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def run(self, cmd: list[str], log, env: dict[str, str]) -> int:
        with self._lock:
            if self.signum is not None:
                return -self.signum
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env, RLREADY_PARENT_PID=str(os.getpid())),
                start_new_session=True,
            )
            self._procs.add(proc)
        try:
            return proc.wait()
        finally:
            with self._lock:
                self._procs.discard(proc)

    def forward(self, signum: int, _frame: Any = None) -> None:
        with self._lock:
            self.signum = signum
            for proc in self._procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signum)  # the stage and, under a launcher, its workers


def _run_stage(
    job: Job,
    stage: str,
    preset: str,
    extra: list[str],
    threads: int,
    progress: Progress,
    debug: bool,
    stages: Stages,
    launcher: list[str] | None = None,
) -> None:
    out = job.stage_dir(stage)
    if is_finished(out):
        if out not in progress.reused:  # finished by another process (e.g. by hand) while the study ran
            _check_finished(job, stage, preset, extra)
            progress.reuse(out)
            progress.line(f"{job.label}: {stage} was finished meanwhile by another process; reused")
        return
    progress.line(f"{job.label}: {stage} started with {threads} thread(s) ({progress.eta()})")
    start = time.perf_counter()
    log = job.root / f"{stage}.log"
    job.root.mkdir(parents=True, exist_ok=True)
    cmd = job.command(stage, preset, extra, launcher) + (["--debug"] if debug else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with log.open("a") as f:
        rc = stages.run(cmd, f, env)
    if stages.signum is not None:
        raise Interrupted(f"{job.label}: {stage} stopped (exit {rc}; log: {log})")
    if rc != 0:
        tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
        raise RuntimeError(f"{job.label}: {stage} failed (exit {rc}): {tail[0] if tail else ''} (log: {log})")
    took = time.perf_counter() - start
    progress.finished(took)
    progress.line(f"{job.label}: {stage} done in {took:.0f}s ({progress.eta()})")


def _follow_move(job: Job, stage: str, saved: dict[str, Any]) -> None:
    """Point a begun stage's recorded ``model.init`` at where its previous stage is now. A study directory that
    was moved while a stage was unfinished would otherwise have that stage refuse to resume, as a run of another
    configuration (its config.json names the old path). ``saved`` is that config.json as :func:`_check_finished`
    read and accepted it (every other setting equal, a ``model`` section included): the model the new path
    names is the study's own previous stage."""
    init = job.init(stage) if stage != "pretrain" else None
    if init is not None and isinstance(saved["model"].get("init"), str) and saved["model"]["init"] != init:
        rundir.write_json(
            job.stage_dir(stage) / "config.json", {**saved, "model": {**saved["model"], "init": init}}
        )


def finished_stages(jobs: list[Job], preset: str, extra: list[str]) -> set[Path]:
    """The directories of the jobs' stages that an earlier run of the study finished. Those and the stages it
    began (a ``config.json`` written, the run checkpointed) are checked by :func:`_check_finished` before any
    stage starts: a resumed study refuses a stage of other settings at once, not hours later when its turn
    comes, and its ETA counts only the stages left to run. A begun stage's ``model.init`` follows a move of
    the study directory (:func:`_follow_move`)."""
    done = set()
    for job in jobs:
        for stage in job.config.stages:
            if is_finished(job.stage_dir(stage)):
                _check_finished(job, stage, preset, extra)
                done.add(job.stage_dir(stage))
            elif (job.stage_dir(stage) / "config.json").is_file():
                _follow_move(job, stage, _check_finished(job, stage, preset, extra, state="begun"))
    return done


def _check_finished(
    job: Job, stage: str, preset: str, extra: list[str], state: str = "finished"
) -> dict[str, Any]:
    """A finished (or begun) stage counts only if it ran what the study would run now: after a change of recipe
    (a new version's presets) or of an override, reusing it would mix runs of two settings in one comparison.
    The previous stage's path (``model.init``) is left out, so that a study directory may be moved. Returns the
    stage's config.json as read."""
    overrides = job.overrides(stage, extra)
    if stage != "pretrain":
        overrides.append(("model.init", "<previous stage>"))
    now = recipes.resolve(stage, preset, overrides=overrides).to_dict()
    try:
        saved = json.loads((job.stage_dir(stage) / "config.json").read_text())
    except (OSError, ValueError):
        saved = None
    if not isinstance(saved, dict):
        raise ConfigError(f"{job.label}: {stage} is {state} but its config.json is missing or unreadable")
    comparable = {**saved, "model": {**saved.get("model", {}), "init": now["model"]["init"]}}
    why = rundir.settings_difference(comparable, now)
    if why is not None:
        raise ConfigError(
            f"{job.label}: {stage} was {state} with other settings ({why}), e.g. by an earlier version's "
            "recipe; use another --out"
        )
    return saved


def schedule(jobs: list[Job], parallel: int, run) -> None:
    """Run every job's stages in order on ``parallel`` workers, earliest stage first across jobs (all
    pre-trainings before any RL), so that the work stays balanced and the last stages finish together.
    ``run(job, stage, runnable)`` runs one stage; the first error stops new stages and is raised."""
    nxt = [0] * len(jobs)  # index of each job's next stage
    busy = [False] * len(jobs)
    errors: list[BaseException] = []
    cond = threading.Condition()

    def pick() -> int | None:
        ready = [i for i in range(len(jobs)) if not busy[i] and nxt[i] < len(jobs[i].config.stages)]
        return min(ready, key=lambda i: (nxt[i], i)) if ready else None

    def worker() -> None:
        while True:
            with cond:
                while True:
                    if errors or all(n == len(j.config.stages) for n, j in zip(nxt, jobs, strict=True)):
                        return
                    i = pick()
                    if i is not None:
                        busy[i] = True
                        runnable = sum(1 for k in range(len(jobs)) if nxt[k] < len(jobs[k].config.stages))
                        break
                    cond.wait()
            try:
                run(jobs[i], jobs[i].config.stages[nxt[i]], runnable)
            except BaseException as err:  # reported after the other workers stop
                with cond:
                    errors.append(err)
                    cond.notify_all()
                return
            with cond:
                nxt[i] += 1
                busy[i] = False
                cond.notify_all()

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(parallel)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]


def _study_state(out: Path, settings: dict[str, Any], overwrite: bool) -> str:
    """Read-only check of the study directory: ``"new"``, ``"resume"`` or ``"replace"``; ConfigError if
    refused (the same rules as a stage's run directory, rlready/train/rundir.py)."""
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a directory")
    if not rundir.entries(out):
        return "new"
    path = out / "study.json"
    if not path.is_file():
        if overwrite:
            rundir.check_replaceable(out, ("study",), "a study")  # raises: a study always has study.json
        raise ConfigError(
            f"--out {str(out)!r} is not empty and holds no rlready study (use another directory)"
        )
    try:
        previous = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        if not overwrite:
            raise ConfigError(f"{path}: unreadable study settings ({err}); use another directory") from None
        previous = None
    if previous == settings:
        return "resume"
    if overwrite:
        rundir.check_replaceable(out, ("study",), "a study")
        return "replace"
    raise ConfigError(
        f"--out {str(out)!r} holds a study with other settings ({_study_difference(previous, settings)}); "
        "use another directory or --overwrite"
    )


def _study_difference(previous: Any, now: dict[str, Any]) -> str:
    """The first setting in which a study directory's ``study.json`` differs from this run's, in a few words."""
    if not isinstance(previous, dict):
        return "study.json holds no settings"
    for key in ("preset", "seeds", "overrides"):
        if previous.get(key) != now[key]:
            return f"{key}: {previous.get(key)!r} there, {now[key]!r} now"
    there = [c for c in previous.get("configs") or [] if isinstance(c, dict)]
    names = [c.get("name") for c in there]
    if names != [c["name"] for c in now["configs"]]:
        return f"configurations {names} there, {[c['name'] for c in now['configs']]} now"
    for old, new in zip(there, now["configs"], strict=True):
        if old != new:
            return f"configuration {new['name']!r}, {rundir.first_difference(old, new)}"
    return "the file differs"


def _claim_study(out: Path, settings: dict[str, Any], overwrite: bool) -> rundir.RunLock:
    """Lock the study directory for this process and set it up; nothing is written before the checks pass."""
    _study_state(out, settings, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    lock = rundir.RunLock(out)
    try:
        if _study_state(out, settings, overwrite) == "replace":  # again under the lock
            rundir.clear(out)
        rundir.write_marker(out, "study")
        rundir.write_json(out / "study.json", settings)
    except BaseException:
        lock.release()
        raise
    return lock


def run_study(
    preset: str,
    out: Path,
    *,
    seeds: int = 1,
    configs: list[StudyConfig] | None = None,
    jobs: int | None = None,
    launcher: str | None = None,
    extra: list[str] | None = None,
    overwrite: bool = False,
    debug: bool = False,
    claims: list[Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the whole study and write ``summary.json`` and ``report.md``.

    ``launcher`` is not a setting of the study: a study may be resumed with or without one (processes that
    share the global batch give the same run to float rounding). Nor are ``claims`` (a configurations file's
    own, :func:`load_claims`), which the report checks next to the default ones and which change no run.
    """
    from rlready import config as cfgmod

    configs = list(configs or DEFAULT_CONFIGS)
    extra = list(extra or [])
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    launch = None
    if launcher is not None:
        launch = shlex.split(launcher)
        if not launch:
            raise ConfigError("--launcher is empty; give a command such as 'torchrun --nproc_per_node 8'")
        # Also next to this Python, so that a virtual environment's torchrun is found without activating it.
        found = shutil.which(launch[0]) or shutil.which(launch[0], path=str(Path(sys.executable).parent))
        if found is None:
            raise ConfigError(f"--launcher: {launch[0]!r} is not an executable on PATH")
        launch[0] = found
    # Validate the preset and every override once, up front, for each stage, before any process starts.
    for stage in STAGE_ORDER:
        init = [("model.init", "<previous stage>")] if stage != "pretrain" else []
        resolved = recipes.resolve(stage, preset, overrides=stage_overrides(extra, stage) + init)
        # Every stage's model is the pre-trained preset's, whose maximum context the chain keeps.
        resolved.model.init = None
        cfgmod.check_lengths(resolved, cfgmod.model_max_positions(resolved), f"preset {preset!r}")
        check_document_attention(resolved)
    for c in configs:
        recipes.resolve("pretrain", preset, overrides=c.loss.to_overrides())
    settings = {
        "preset": preset,
        "seeds": seeds,
        "configs": [c.to_dict() for c in configs],
        "overrides": extra,
    }
    with _claim_study(out, settings, overwrite):
        return _run_jobs(out, configs, seeds, preset, extra, jobs, launch, debug, claims or [])


def _run_jobs(
    out: Path,
    configs: list[StudyConfig],
    seeds: int,
    preset: str,
    extra: list[str],
    jobs: int | None,
    launch: list[str] | None,
    debug: bool,
    claims: list[Any],
) -> dict[str, Any]:

    runs = [Job(c, s, out / "runs" / f"{c.name}-s{s}") for c in configs for s in range(seeds)]
    cores = usable_cores()
    # A launcher's processes take the machine's devices: one stage at a time unless --jobs says otherwise.
    parallel = max(1, min(len(runs), jobs or (1 if launch else cores)))
    # Any stage directory already there (finished or checkpointed): this run resumes an earlier one.
    resumed = any(j.stage_dir(s).exists() for j in runs for s in j.config.stages)
    progress = Progress(
        total=sum(len(j.config.stages) for j in runs),
        reused=finished_stages(runs, preset, extra),
        parallel=parallel,
    )
    progress.line(
        f"study of {len(configs)} configurations x {seeds} seeds on preset {preset!r}: {parallel} in parallel on {cores} cores"
    )
    t0 = time.perf_counter()
    stages = Stages()
    previous = (
        {s: signal.signal(s, stages.forward) for s in (signal.SIGTERM, signal.SIGINT)}
        if threading.current_thread() is threading.main_thread()  # only there can Python handle signals
        else {}
    )
    try:
        schedule(
            runs,
            parallel,
            lambda job, stage, runnable: _run_stage(
                job,
                stage,
                preset,
                extra,
                stage_threads(cores, parallel, runnable),
                progress,
                debug,
                stages,
                launch,
            ),
        )
    except Exception:
        if stages.signum is None:
            raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stages.signum is not None:  # every running stage has checkpointed and ended
        raise Interrupted(
            f"study interrupted by {signal.Signals(stages.signum).name}; its running stages checkpointed; "
            "run the same command to resume"
        )
    from rlready.report.claims import claims_entries
    from rlready.report.summary import collect

    summary = {**collect(out, runs), **_timing(out, time.perf_counter() - t0, resumed, progress)}
    summary["claims"] = claims_entries(summary, claims)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    from rlready.report.report import write_report

    write_report([out])
    progress.line(f"study done in {summary['wall_time_s'] / 60:.1f} min: {out / 'report.md'}")
    return summary


def _timing(out: Path, seconds: float, resumed: bool, progress: Progress) -> dict[str, Any]:
    """summary.json's wall time: this run's, and whether it resumed an earlier one (then it is the last run's
    only) and how many stages that one had finished. A run that ran no stage (the summary and report written
    again) keeps the earlier summary's figures."""
    if not progress.durations:
        with contextlib.suppress(OSError, ValueError, TypeError):
            earlier = json.loads((out / "summary.json").read_text())
            kept = {k: earlier[k] for k in ("wall_time_s", "resumed", "stages_reused") if k in earlier}
            if "wall_time_s" in kept:
                return kept
    return {"wall_time_s": round(seconds, 1), "resumed": resumed, "stages_reused": len(progress.reused)}


def _applies(key: str, stage: str) -> bool:
    """Overrides of the ``rl`` section only go to the RL stage, ``loss`` only to the LM stages."""
    section = key.split(".", 1)[0]
    return not ((section == "rl" and stage != "rl") or (section == "loss" and stage == "rl"))


def stage_overrides(extra: list[str], stage: str) -> list[tuple[str, str]]:
    """The overrides one stage gets: ``--STAGE.section.field V`` for that stage only, plain
    ``--section.field V`` for every stage it applies to (``rl.*`` only to RL, ``loss.*`` only to the LM stages)."""
    from rlready.config import parse_overrides

    out = []
    for key, value in parse_overrides(extra):
        head, _, rest = key.partition(".")
        if (
            head in STAGE_ORDER and "." in rest
        ):  # "rl.group_size" is the rl section, "rl.rl.group_size" the stage
            if head == stage:
                out.append((rest, value))
        elif _applies(key, stage):
            out.append((key, value))
    return out
