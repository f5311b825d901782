"""The learner entrypoint: `python -m trainer.train --job FILE --job-id ID --output-dir DIR`.

Runs the learner under Ray Train's TorchTrainer (gloo on CPU, NCCL on GPU) with `resources.learner_workers` FSDP
ranks: rank 0 drives the job (bus, weights, events, checkpoints), the others follow it (`trainer.collective`).
`--no-ray` runs one rank in this process. On a KubeRay RayJob, `RAY_ADDRESS` points at the job's cluster.
Exit status 0 means the job succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from services.config import Settings
from services.contracts import ContractError, JobEvent, JobSpec, JobState
from services.models import resolve_model
from services.streams import Streams, connect
from services.telemetry import configure_logging, serve_metrics

log = logging.getLogger(__name__)


class LearnerSettings(Settings):
    eval_limit: int | None = None  # examples per eval data set; None evaluates all
    data_dir: Path | None = None  # where relative data paths of a JobSpec are found
    # A local Ray cluster (no RAY_ADDRESS): its CPUs (None: all of the machine's) and object store size.
    ray_num_cpus: int | None = Field(None, ge=1)
    ray_object_store_mb: int | None = Field(None, ge=80)
    # CPU threads of each rank's torch (None: what Ray gives, one per reserved CPU). On one machine whose rollout
    # tier idles while the learner updates (on-policy), the update may use every core.
    torch_threads: int | None = Field(None, ge=1)


def learner_device() -> torch.device:
    """This rank's device: the GPU Ray Train assigned to it, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        from ray.train.torch import get_device

        return get_device()
    except Exception:  # not under Ray Train (--no-ray)
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def run_learner(config: dict[str, Any]) -> None:
    """The body of one learner process (one Ray Train worker, or this process with --no-ray)."""
    from transformers import AutoTokenizer

    from trainer.collective import Collective
    from trainer.data import load_data
    from trainer.learner import Learner, LearnerContext
    from trainer.policy import build_models
    from trainer.ranks import Ranks

    spec = JobSpec.parse(config["spec"])
    settings = LearnerSettings.load()
    configure_logging(settings.log_level, settings.log_format)
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    device = learner_device()
    log.info("learner rank on %s with %d torch threads", device, torch.get_num_threads())
    torch.manual_seed(spec.schedule.seed)
    ranks = Ranks.current(timedelta(seconds=collective_timeout_s(spec)))
    model_path = resolve_model(spec.model)
    models = build_models(spec, model_path, device)
    if not ranks.is_driver:
        Collective(spec, models, device, ranks).follow()
        return
    serve_metrics(settings.metrics_host, settings.metrics_port, "learner")  # the driver rank's, for the PodMonitor
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data = load_data(spec.data, base_dir=settings.data_dir)

    async def main() -> None:
        streams = Streams(connect(settings), settings)
        try:
            ctx = LearnerContext(
                spec=spec, job_id=config["job_id"], output_dir=Path(config["output_dir"]), streams=streams,
                models=models, tokenizer=tokenizer, data=data, device=device, eval_limit=settings.eval_limit,
                ranks=ranks,
            )  # fmt: skip
            await Learner(ctx).run()
        finally:
            await streams.aclose()

    asyncio.run(main())


def run_with_ray_train(config: dict[str, Any], spec: JobSpec) -> None:
    import ray

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(**ray_init_kwargs(LearnerSettings.load()))
    try:
        _fit(config, spec)
    finally:
        if started_ray:
            ray.shutdown()


def ray_init_kwargs(settings: LearnerSettings) -> dict[str, Any]:
    """Arguments of `ray.init`: join RAY_ADDRESS when set, else start a local cluster sized by the settings
    (`address="local"`: never join some other cluster that happens to run on this machine).

    The workers get this process's SEARCHR1_* variables (Redis, key prefix, data folder, ...) either way: on a
    cluster they were started elsewhere and would not see them otherwise.
    """
    env = {key: value for key, value in os.environ.items() if key.startswith("SEARCHR1_")}
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "runtime_env": {"env_vars": env}}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        return {**kwargs, "address": address}
    kwargs["address"] = "local"
    if settings.ray_num_cpus is not None:
        kwargs["num_cpus"] = settings.ray_num_cpus
    if settings.ray_object_store_mb is not None:
        kwargs["object_store_memory"] = settings.ray_object_store_mb * 1024 * 1024
    return kwargs


def collective_timeout_s(spec: JobSpec) -> int:
    """How long a rank may wait for the others. Ranks > 0 wait while rank 0 gathers rollouts: an eval and a train
    step's rollouts, each up to three request timeouts (`Learner.rollouts`), can lie between two collectives."""
    return 1800 + 6 * int(spec.rollout.request_timeout_s)


def _fit(config: dict[str, Any], spec: JobSpec) -> None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.train.v2.api.exceptions import WorkerGroupError

    use_gpu = spec.resources.learner_gpus_per_node > 0
    trainer = TorchTrainer(
        run_learner,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=collective_timeout_s(spec)),
        scaling_config=ScalingConfig(
            num_workers=spec.resources.learner_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": spec.resources.learner_cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RunConfig(
            name=config["job_id"],
            storage_path=str(Path(config["output_dir"]).resolve() / "ray"),
            # A failed rank restarts the worker group, which resumes from the learner's last checkpoint.
            failure_config=FailureConfig(max_failures=spec.schedule.max_restarts),
        ),
    )
    try:
        trainer.fit()
    except WorkerGroupError as exc:  # report what went wrong on the first failed rank, not Ray's wrapper
        if not exc.worker_failures:
            raise
        raise exc.worker_failures[min(exc.worker_failures)] from exc


def report_failure(job_id: str, error: BaseException) -> None:
    """Tell the control plane why the learner stopped (it also sees the exit status)."""

    async def publish() -> None:
        settings = Settings.load()
        streams = Streams(connect(settings), settings)
        event = JobEvent(
            job_id=job_id, event="state", state=JobState.FAILED, message=f"{type(error).__name__}: {error}"
        )
        await streams.publish(streams.job(job_id, "events"), event)
        await streams.aclose()

    try:
        asyncio.run(publish())
    except Exception:  # reporting is best effort; the exit status still says FAILED
        log.exception("could not report the failure of job %s", job_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the learner of one training job")
    parser.add_argument("--job", required=True, help="the JobSpec (JSON or YAML)")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--output-dir", required=True, help="checkpoints and weights go here")
    parser.add_argument("--no-ray", action="store_true", help="run in this process instead of under Ray Train")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        import yaml

        spec = JobSpec.parse(yaml.safe_load(Path(args.job).read_text()))
    except (OSError, ContractError, ValueError) as exc:
        print(f"trainer: bad job {args.job}: {exc}", file=sys.stderr)
        report_failure(args.job_id, exc)
        return 2
    config = {"spec": spec.model_dump(mode="json"), "job_id": args.job_id, "output_dir": args.output_dir}
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_dir) / "job.json").write_text(json.dumps(config["spec"], indent=2))
    try:
        if args.no_ray:
            run_learner(config)
        else:
            run_with_ray_train(config, spec)
    except Exception as exc:
        log.exception("learner of job %s failed", args.job_id)
        report_failure(args.job_id, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
