"""Where a run lives and when a directory may be (re)used.

- One run per directory at a time. The main process (only it, under torchrun) holds an OS lock,
  fcntl.flock on `<run dir>/.llmtune.lock`, from `claim` to the end of the run; the kernel drops
  it on any exit, kill -9 included. A second run is refused with the holder's PID. The lock file
  stays behind: deleting it would let two runs lock two different files.
- Nothing in the directory is written, replaced or removed before every refusal check has passed
  (bad data, a missing package, a resume with other settings, ...): `claim` only takes the lock;
  `commit`, called when training is about to start, clears what it replaces, then writes
  config.yaml, .hydra/ and run.log (log lines until then are held in memory).
- A directory holds "a run" once it has a checkpoint, metrics.json, final/ or a logged optimizer
  step. An attempt that failed before any of these (its lock file there, the lock free) is not a
  run: the next run removes the files it left (config.yaml, run.log, .hydra/, a train_log.jsonl
  without steps) and uses the directory. Nothing else is ever removed, and a directory llmtune
  never locked is never cleaned: a config.yaml there may be the user's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from logging.handlers import MemoryHandler
from pathlib import Path

from llmtune.errors import UserError

log = logging.getLogger("llmtune")
RUN_MARKERS = ("config.yaml", "metrics.json", "train_log.jsonl", "checkpoints")
LOCK_FILE = ".llmtune.lock"
# What a run writes besides its markers; an overwrite removes these too.
RUN_FILES = (*RUN_MARKERS, "final", "run.log", ".hydra", "predictions")
# What an attempt that never trained may leave (checkpoints/: only an unfinished .tmp-step-N).
ATTEMPT_FILES = ("config.yaml", "run.log", ".hydra", "train_log.jsonl", "checkpoints")
# A resumed run's config.yaml replaces the previous one; a previous one that differs (beyond
# trainer.resume) is kept under this name, N being the step the run resumed at.
KEPT_CONFIG = "config.until-step-{}.yaml"


def run_dir_of(cfg) -> Path:
    """Hydra's job directory when Hydra runs the job (a sweep job gets its own), else output_dir."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    # A config composed outside a Hydra job (compare, continual, tests) may leave a HydraConfig
    # behind whose runtime.output_dir is unset ("???"): that is no job directory either.
    if HydraConfig.initialized() and not OmegaConf.is_missing(HydraConfig.get().runtime, "output_dir"):
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(str(cfg.output_dir)).expanduser().resolve()


def check_output_dir(path: Path) -> None:
    """`path` is a directory or can be made one, and this user may write there."""
    existing = path
    while not existing.exists():  # the deepest part of the path that exists
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is inside {existing}, which is a file"
        raise UserError(f"output_dir={path} {where}; point output_dir at a directory (a new one, or a run to resume).")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output_dir={path}: no permission to write in {existing}; pick a directory you can write to.")


def check_run_dir(run_dir: Path, tcfg) -> None:
    """Refuse, without writing anything, a directory this run may not use: not a directory, in
    use by a live run, or holding a finished or resumable run that it neither resumes
    (trainer.resume) nor replaces (trainer.overwrite_output_dir)."""
    check_output_dir(run_dir)
    holder = lock_holder(run_dir)
    if holder is not None:
        raise UserError(_in_use(run_dir, holder))
    _refuse_a_used_dir(run_dir, tcfg, failed_attempt(run_dir))


def _refuse_a_used_dir(run_dir: Path, tcfg, failed: bool) -> None:
    """`failed`: what the directory holds is a failed attempt's (see failed_attempt)."""
    if tcfg.resume is not None or tcfg.overwrite_output_dir or failed:
        return
    found = [m for m in RUN_MARKERS if (run_dir / m).exists()]
    if found:
        raise UserError(
            f"output_dir {run_dir} already holds a run ({', '.join(found)}); pick a new output_dir, "
            "continue it with trainer.resume=auto, or replace it with trainer.overwrite_output_dir=true."
        )


def failed_attempt(run_dir: Path) -> bool:
    """llmtune locked this directory before (its lock file is there), and that attempt ended
    before a checkpoint, metrics.json, final/ or a logged optimizer step. The caller knows
    that the lock is free."""
    if not (run_dir / LOCK_FILE).is_file() or (run_dir / "metrics.json").exists() or (run_dir / "final").exists():
        return False
    checkpoints = run_dir / "checkpoints"
    if checkpoints.exists() and (not checkpoints.is_dir() or any(not p.name.startswith(".tmp-step-") for p in checkpoints.iterdir())):
        return False
    return _no_steps(run_dir / "train_log.jsonl") and _ours(run_dir / "config.yaml")


def _no_steps(train_log: Path) -> bool:
    """No optimizer step is logged (an evaluation at step 0 may be)."""
    if not train_log.exists():
        return True
    try:
        records = [json.loads(line) for line in train_log.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return False  # unreadable: keep it, as if it held steps
    return not any(isinstance(r, dict) and r.get("type") == "train" for r in records)


def _ours(config: Path) -> bool:
    """config.yaml is absent or one llmtune wrote (a resolved run config)."""
    if not config.exists():
        return True
    import yaml

    try:
        saved = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(saved, dict) and {"command", "trainer", "output_dir"} <= saved.keys()


def _in_use(run_dir: Path, pid: str) -> str:
    return f"output_dir {run_dir} is in use by another llmtune run (pid {pid}); wait for it to end, or pick another output_dir."


# --------------------------------------------------------------------------- the lock
def lock_holder(run_dir: Path) -> str | None:
    """The PID of the live run that holds the directory's lock, or None when it is free.
    Only looks: takes no lock it keeps and creates nothing."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no locking
        return None
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None  # no lock file: never locked
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _pid_in(run_dir / LOCK_FILE)
    finally:
        os.close(fd)  # also drops the shared lock, if it was taken
    return None


def _pid_in(lock_file: Path) -> str:
    try:
        return lock_file.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


class RunLock:
    """An exclusive flock on `<run dir>/.llmtune.lock`, which holds the holder's PID."""

    def __init__(self, run_dir: Path) -> None:
        self.path, self.fd = run_dir / LOCK_FILE, None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(_in_use(self.path.parent, _pid_in(self.path))) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# --------------------------------------------------------------------------- one run's directory
class RunDir:
    """The directory of one run, from claim to release. Only the main process touches it; the
    methods do nothing on the others."""

    def __init__(self, path: Path, tcfg, is_main: bool) -> None:
        self.path, self.tcfg, self.is_main = path, tcfg, is_main
        self.lock = RunLock(path)
        self.pending: MemoryHandler | None = None
        self.committed = False
        self.failed_attempt = False  # set by claim: the directory holds what a failed attempt left

    def claim(self) -> None:
        """Lock the directory and check it may be used; writes nothing but the lock file."""
        if not self.is_main:
            return
        check_output_dir(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"output_dir={self.path}: cannot create it ({exc.strerror}); pick another output_dir.") from None
        # A lock file that this claim creates does not make the directory a failed attempt.
        locked_before = (self.path / LOCK_FILE).is_file()
        self.lock.acquire()
        self.failed_attempt = locked_before and failed_attempt(self.path)
        try:
            _refuse_a_used_dir(self.path, self.tcfg, self.failed_attempt)  # again, now that no other run can change it
        except UserError:
            self.lock.release()
            raise

    def hold_log(self) -> None:
        """Keep log lines in memory until commit writes them to run.log (call after the
        logging set-up): a run that is refused leaves no run.log behind."""
        if self.is_main:
            self.pending = MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
            log.addHandler(self.pending)

    def commit(self, config_yaml: str, hydra_files: dict[str, str], step: int) -> None:
        """Every refusal check has passed and training starts at `step`: make the directory this
        run's — clear what it replaces, then write config.yaml, .hydra/ and run.log."""
        if not self.is_main or self.committed:
            return
        self.committed = True
        self._clear_previous()
        config = self.path / "config.yaml"
        if config.is_file() and _settings(config.read_text()) != _settings(config_yaml):
            os.replace(config, self.path / KEPT_CONFIG.format(step))
        config.write_text(config_yaml)
        if hydra_files:
            (self.path / ".hydra").mkdir(exist_ok=True)
            for name, text in hydra_files.items():
                (self.path / ".hydra" / name).write_text(text)
        self._start_run_log()

    def _clear_previous(self) -> None:
        if self.failed_attempt:
            _remove(self.path, ATTEMPT_FILES)
        elif self.tcfg.resume is None and self.tcfg.overwrite_output_dir and any((self.path / m).exists() for m in RUN_MARKERS):
            log.warning("replacing the run in %s (trainer.overwrite_output_dir=true)", self.path)
            _remove(self.path, [*RUN_FILES, *(p.name for p in self.path.glob(KEPT_CONFIG.format("*")))])

    def _start_run_log(self) -> None:
        from llmtune.ui.console import run_log_handler

        handler = run_log_handler(self.path / "run.log")
        log.addHandler(handler)
        if self.pending is not None:
            self.pending.setTarget(handler)
            self.pending.flush()
            self._drop_pending()

    def _drop_pending(self) -> None:
        if self.pending is not None:
            log.removeHandler(self.pending)
            self.pending.close()
            self.pending = None

    def release(self) -> None:
        self._drop_pending()
        self.lock.release()


def _settings(config_yaml: str):
    """A config.yaml's content without trainer.resume, which a resume always changes."""
    import yaml

    try:
        saved = yaml.safe_load(config_yaml)
    except yaml.YAMLError:
        return config_yaml
    if isinstance(saved, dict) and isinstance(saved.get("trainer"), dict):
        saved["trainer"].pop("resume", None)
    return saved


def _remove(run_dir: Path, names) -> None:
    for name in names:
        target = run_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def hydra_record(cfg) -> dict[str, str]:
    """Hydra's record of the job for .hydra/ (config.yaml, hydra.yaml, overrides.yaml), as Hydra
    writes it; {} outside Hydra. Hydra does not write it itself (hydra.output_subdir: null in
    conf/hydra/llmtune.yaml): it would land in the directory before the checks."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.instance().cfg
    return {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
        "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task),
    }
