"""lepton.sdk: what your own training program (a TrainingJob's spec.trainer.command) needs from Lepton.
Standard library only: it imports in any image that has Python, and nothing in it needs PyTorch.

    from lepton import sdk

    hp = {"lr": 1e-3, **sdk.hyperparameters()}          # spec.trainer.hyperparameters, a trial's parameters
    start = 0
    if (found := sdk.latest_checkpoint()) is not None:  # a restarted gang resumes here
        start = sdk.checkpoint_step(found)               # ... and load your state from found/
    for step in range(start + 1, total + 1):
        ...                                              # one optimizer step
        sdk.report(step=step, total_steps=total, loss=loss)
        if step % 100 == 0:
            sdk.report(step=step, metrics={"eval_loss": eval_loss, "accuracy": accuracy})
        stop = sdk.stopping()                            # SIGTERM: deleted, suspended, pruned; in DDP all_reduce it
        if sdk.should_checkpoint(step, stopping=stop):
            if sdk.is_main():
                with sdk.save_checkpoint(step) as tmp:   # complete and renamed into place on exit
                    torch.save(state, tmp / "state.pt")
            # DDP: dist.barrier() here
        if stop:
            sys.exit(sdk.EXIT_STOPPED)
    sdk.finish(metrics={"eval_loss": eval_loss}, model=sdk.output_dir())  # rank 0 writes the summary

The job's side (report, finish, stopping, checkpoints) serves GET /progress (the operator reads it
into the TrainingJob's status; a TuningStudy prunes on its evaluations) and GET /metrics (Prometheus,
lepton_trainer_*) on LEPTON_METRICS_PORT + LOCAL_RANK, and turns SIGTERM into `stopping()`. Outside
a job every function still works: no endpoint, no checkpoints, the fallbacks are yours.
The environment's names are in `lepton.sdk.env`; the checkpoint layout is `lepton.sdk.checkpoints`.
"""

from lepton.sdk.runtime import (
    EXIT_STOPPED,
    checkpoint_dir,
    checkpoint_step,
    data_path,
    dataset_version,
    finish,
    hyperparameters,
    is_main,
    latest_checkpoint,
    local_rank,
    output_dir,
    rank,
    report,
    save_checkpoint,
    should_checkpoint,
    stopping,
    world_size,
)

__all__ = [
    "EXIT_STOPPED",
    "checkpoint_dir",
    "checkpoint_step",
    "data_path",
    "dataset_version",
    "finish",
    "hyperparameters",
    "is_main",
    "latest_checkpoint",
    "local_rank",
    "output_dir",
    "rank",
    "report",
    "save_checkpoint",
    "should_checkpoint",
    "stopping",
    "world_size",
]
