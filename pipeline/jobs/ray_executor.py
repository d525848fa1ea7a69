"""``run.executor: ray``: the ``run.world_size`` ranks of a job as Ray tasks, from one driver.

The driver (``pipeline run`` on a cluster's head node, or anywhere that can
reach it) connects to the cluster (``run.ray_address``, else ``RAY_ADDRESS``,
else a local cluster it starts itself), starts one task per rank
(:func:`~pipeline.jobs.ray_rank.run_rank`: the same job a dyno runs), shows
one progress line for them all, merges the ranks' manifests when they are
done, and ends with the worst rank's exit code.

Between the tasks: a :class:`~pipeline.jobs.ray_rank.Board` actor carries
the driver's signals and the tasks' counters, and a
:class:`~pipeline.embed.ray_limiter.LimiterActor` holds the one rate budget
of the whole job (unless ``embedding.rate_limit_store`` names a shared store,
which each task's embedder then uses). Ray starts a task again when its
worker process or node dies (``max_retries``); the rank's lease and resume
state make the second attempt carry on from the first one's last commit.

With a local cluster the workers share this machine's interpreter and
working directory. On an existing cluster the driver's own ``pipeline``
package is shipped to the workers (``runtime_env`` ``py_modules``), so the
workers run the driver's code; its dependencies must be installed on the
cluster's nodes (``pip install 'pipeline[ray]'`` in their image).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import anyio

import pipeline
from pipeline.config import Config
from pipeline.errors import ConfigError, SinkError
from pipeline.jobs.outcome import RunResult
from pipeline.jobs.progress import PROGRESS_EVERY_S
from pipeline.jobs.ray_outcome import RankOutcomes
from pipeline.jobs.shutdown import EXIT_CODES, SIGNALS
from pipeline.logs import LogSetup, format_duration, get_logger, redact_url

MAX_RETRIES = 3  # Ray's own default: a rank whose worker died is started again up to this often
FORCE_AFTER_S = 15.0  # past the grace period, a task that has not returned is killed
CONNECT_TIMEOUT_S = 10.0


class RayExecutor:
    """Every rank of the job, as tasks on a Ray cluster; one result for the whole job."""

    async def run(self, cfg: Config, **options: Any) -> RunResult:
        """Run all ``run.world_size`` ranks of ``cfg`` to their end; the job's result."""
        logs: LogSetup | None = options.pop("logs", None)
        fresh = bool(options.pop("fresh", False))
        handle_signals = bool(options.pop("handle_signals", True))
        if options:
            raise TypeError(f"run.executor: ray does not take {', '.join(sorted(options))}")
        if fresh and cfg.run.world_size != 1:  # every task would refuse it: say so before starting a cluster
            raise SinkError("--fresh deletes the whole dataset; use it with world_size 1 only")
        ray = _import_ray()
        log = get_logger()
        started = time.monotonic()
        if (named := _address(cfg)) is not None and not ray.is_initialized():
            await anyio.to_thread.run_sync(_check_reachable, *named)
        owned = _connect(ray, cfg)
        try:
            resources = ray.cluster_resources()
            log.info("ray_connected", address=_address_shown(cfg), startup_s=round(time.monotonic() - started, 1),
                     nodes=len([n for n in ray.nodes() if n.get("Alive")]), cpus=resources.get("CPU"),
                     world_size=cfg.run.world_size)
            return await _Driver(ray, cfg, fresh=fresh, logs=logs, handle_signals=handle_signals).run()
        finally:
            if owned:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(ray.shutdown)


#: read by Ray when it is imported: the tasks' lines reach the driver's stderr as they are (logfmt or
#: JSON lines that carry rank=), without a coloured "(task pid=...)" prefix, and none folded into
#: another by Ray's deduplication (which merges lines that differ only in their numbers)
RAY_LOG_DEFAULTS = {"RAY_DEDUP_LOGS": "0", "RAY_DISABLE_WORKER_LOG_PREFIX": "1", "RAY_COLOR_PREFIX": "0"}


def _import_ray() -> Any:
    for var, value in RAY_LOG_DEFAULTS.items():
        os.environ.setdefault(var, value)  # a user's own setting wins
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "run.executor: ray needs Ray installed on this machine: pip install 'pipeline[ray]'"
        ) from exc
    return ray


def _address(cfg: Config) -> tuple[str, str] | None:
    """(where it was named, the cluster's address), or None for a local cluster."""
    if cfg.run.ray_address:
        return "run.ray_address", cfg.run.ray_address
    if os.environ.get("RAY_ADDRESS"):
        return "RAY_ADDRESS", os.environ["RAY_ADDRESS"]
    return None


def _address_shown(cfg: Config) -> str:
    named = _address(cfg)
    return redact_url(named[1]) if named else "local"


def _check_reachable(where: str, address: str) -> None:
    """Raise :class:`ConfigError` when nothing answers at ``address`` (``ray.init`` would retry for minutes)."""
    target = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and the like: Ray finds the cluster itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{where} {redact_url(address)}: no Ray cluster answers there ({reason})") from exc


def _connect(ray: Any, cfg: Config) -> bool:
    """Connect to the cluster ``run.ray_address`` names; True when this call connected (so shut down after).

    Already connected (a test's session cluster, a notebook): use that
    connection. ``ray.init`` installs its own SIGTERM handler in the driver;
    the one in place before is put back, since the driver watches its
    signals itself once the run starts.
    """
    if ray.is_initialized():
        return False
    named = _address(cfg)
    address = named[1] if named else None
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
    if address is None:
        # a local cluster, on loopback, with a CPU for each rank (ranks mostly wait on the network)
        kwargs.update(num_cpus=max(os.cpu_count() or 1, cfg.run.world_size), include_dashboard=False,
                      _node_ip_address="127.0.0.1")
    else:
        # an existing cluster: ship the driver's own package, so its workers run the driver's code
        kwargs["runtime_env"] = {"py_modules": [str(Path(pipeline.__file__).parent)]}
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
        where = f"{named[0]} {redact_url(address)}" if named and address else "a local Ray cluster"
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"{where}: cannot start or reach the Ray cluster: {reason}") from exc
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return True


class _Driver:
    """One job on the cluster: its actors, its tasks, its signals and its progress line."""

    def __init__(self, ray: Any, cfg: Config, *, fresh: bool, logs: LogSetup | None, handle_signals: bool) -> None:
        self.ray = ray
        self.cfg = cfg
        self.fresh = fresh
        self.logs = logs
        self.handle_signals = handle_signals
        self.log = get_logger()
        self.signals: list[int] = []
        self.outcomes = RankOutcomes(cfg)
        self.refs: dict[int, Any] = {}
        self.started = time.monotonic()
        self._attempts: dict[int, int] = {}

    async def run(self) -> RunResult:
        from pipeline.jobs.ray_rank import Board, run_rank

        ray, cfg = self.ray, self.cfg
        run_id = uuid.uuid4().hex[:8]
        self.board = ray.remote(Board).options(name=f"pipeline-board-{run_id}", num_cpus=0).remote()
        limiter = self._limiter(run_id)
        task = ray.remote(run_rank)
        self.log.info("run_started", executor="ray", source=cfg.source.path, sink=cfg.sink.path,
                      provider=cfg.embedding.provider, model=cfg.embedding.model, world_size=cfg.run.world_size)
        for rank in range(cfg.run.world_size):
            rank_cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"rank": rank})})
            self.refs[rank] = task.options(
                name=f"pipeline-rank-{rank}", num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False,
            ).remote(rank_cfg, self.board, limiter, self.fresh)
        try:
            async with anyio.create_task_group() as tg:
                if self.handle_signals:
                    tg.start_soon(self._watch_signals, tg)
                tg.start_soon(self._report)
                async with anyio.create_task_group() as waiting:
                    for rank, ref in self.refs.items():
                        waiting.start_soon(self._collect, rank, ref)
                tg.cancel_scope.cancel()
        finally:
            for actor in (self.board, limiter):
                if actor is not None:
                    ray.kill(actor)
        result = await anyio.to_thread.run_sync(self.outcomes.result, self._signal_code())
        self.log.info("run_finished", executor="ray", status=result.status, exit_code=result.exit_code,
                      elapsed=format_duration(time.monotonic() - self.started), ranks=cfg.run.world_size,
                      dataset_rows=result.totals.get("rows_embedded"), dataset_failed=result.totals.get("rows_failed"),
                      prompt_tokens=result.totals.get("prompt_tokens"), **({"error": result.message} if result.message else {}))
        return result

    def _limiter(self, run_id: str) -> Any:
        """The job's rate budget as an actor, or None where the tasks need none of it.

        ``embedding.rate_limit_store`` (a Redis URL) already makes every
        worker naming it share one budget: each task's embedder builds that
        limiter itself, and no actor is started.
        """
        emb = self.cfg.embedding
        if emb.provider != "http" or emb.rate_limit_store:
            return None
        from pipeline.embed.ray_limiter import LimiterActor

        return self.ray.remote(LimiterActor).options(
            name=f"pipeline-limiter-{run_id}", num_cpus=0,
        ).remote(emb.requests_per_minute, emb.tokens_per_minute)

    async def _collect(self, rank: int, ref: Any) -> None:
        """Wait for one rank's task and keep how it ended."""
        exceptions = self.ray.exceptions
        try:
            result = await ref
        except exceptions.TaskCancelledError:
            self.outcomes.cancelled(rank, self._signal_code())
        except exceptions.RayError as exc:
            self.log.error("rank_task_failed", rank=rank, error=_short(exc))
            self.outcomes.crashed(rank, _short(exc))
        else:
            self.outcomes.add(rank, result)

    def _signal_code(self) -> int | None:
        return EXIT_CODES[signal.Signals(self.signals[0])] if self.signals else None

    async def _watch_signals(self, tg: anyio.abc.TaskGroup) -> None:
        """Pass SIGTERM, SIGINT and SIGHUP on to every task: the first drains, a second cancels."""
        with anyio.open_signal_receiver(*SIGNALS) as received:
            async for signum in received:
                self.signals.append(signum)
                name = signal.Signals(signum).name
                if len(self.signals) == 1:
                    self.log.warning("shutdown_requested", signal=name, grace_s=self.cfg.run.shutdown_grace_s,
                                     hint="every task finishes what is in flight and commits; "
                                          "a second signal stops them at once")
                    tg.start_soon(self._force_after, self.cfg.run.shutdown_grace_s + FORCE_AFTER_S)
                else:
                    self.log.warning("shutdown_forced", signal=name)
                try:
                    begun = set(await self.board.stop.remote(signum))
                except self.ray.exceptions.RayError as exc:  # the board is gone: interrupt every task instead
                    self.log.warning("board_lost", error=type(exc).__name__)
                    begun = set()
                for rank, ref in self.refs.items():
                    if rank not in begun and not self.outcomes.has(rank):
                        self.ray.cancel(ref)  # not started yet: never start it

    async def _force_after(self, delay: float) -> None:
        """Kill the tasks still running ``delay`` s after the first signal (a task stuck past its grace)."""
        await anyio.sleep(delay)
        for rank, ref in self.refs.items():
            if not self.outcomes.has(rank):
                self.log.warning("rank_killed", rank=rank, after_s=delay)
                self.ray.cancel(ref, force=True)

    async def _report(self) -> None:
        """One progress line for all the tasks, every 10 s (live on a terminal)."""
        live = self.logs.console if self.logs and self.logs.live else None
        while True:
            await anyio.sleep(0.5 if live else PROGRESS_EVERY_S)
            try:
                board = await self.board.snapshot.remote()
            except self.ray.exceptions.RayError:
                continue
            self._note_retries(board["attempts"])
            fields = self.outcomes.progress(board, time.monotonic() - self.started)
            if live is not None:
                live.show(
                    f"ranks {fields['ranks_done']}/{self.cfg.run.world_size} done, {fields['ranks_running']} running"
                    f"  {fields.get('done_pct', '?')}%  records {fields['records']:,}  rows {fields['rows']:,}"
                    f"  failed {fields['failed']:,}  tokens {fields['tokens']:,}  {fields['rows_per_s']:,.0f} rows/s"
                    f"  retries {fields['retries']}  429s {fields['throttled']}  {fields['elapsed']}"
                )
            else:
                self.log.info("progress", **fields)

    def _note_retries(self, attempts: dict[int, int]) -> None:
        for rank, count in attempts.items():
            if count > self._attempts.get(rank, 1):
                self.log.warning("rank_restarted", rank=rank, attempt=count,
                                 hint="its worker died; the new attempt resumes from the rank's last commit")
            self._attempts[rank] = count


def _short(exc: BaseException) -> str:
    """One line for a Ray error: the remote exception's own line, not its traceback."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
