"""TensorBoard tag names of the public contract (shared/DESIGN.md), in one place for writer and reader.

Steps on every tag are optimizer steps: ``trainer.global_step`` after the step.
"""

PREFIX = "lrwatch"
DISPLACEMENT = f"{PREFIX}/displacement"
GRAD_NORM = f"{PREFIX}/grad_norm"
DESCENT = f"{PREFIX}/descent"
MOMENTUM = f"{PREFIX}/momentum"
LOSS = f"{PREFIX}/loss"
LR = f"{PREFIX}/lr"
DIAGNOSIS = f"{PREFIX}/diagnosis"
DIAGNOSES_TEXT = f"{PREFIX}/diagnoses"
ACTION = f"{PREFIX}/action"
SHARPNESS = f"{PREFIX}/sharpness"
STABILITY_CEILING = f"{PREFIX}/stability_ceiling"
SHARPNESS_RATIO = f"{PREFIX}/sharpness_ratio"
NEGATIVE_CURVATURE = f"{PREFIX}/negative_curvature"
MOMENTUM_TRANSIENT = f"{PREFIX}/momentum_transient"
ADAM_STEP_PER_LR = f"{PREFIX}/adam/step_per_lr"
ADAM_BIAS_FACTOR = f"{PREFIX}/adam/bias_factor"
EFFECTIVE_DECAY = f"{PREFIX}/adamw/effective_decay"


def lr_tag(optimizer: str, group: int | None = None, group_name: str | None = None) -> str:
    """``lrwatch/lr/<optimizer>`` for a single param group, else ``lrwatch/lr/<optimizer>/<name or pg<i>>``."""
    if group is None:
        return f"{LR}/{optimizer}"
    return f"{LR}/{optimizer}/{group_name if group_name else f'pg{group}'}"


def series_tag(base: str, optimizer: str | None) -> str:
    """A per-step series tag; suffixed with the optimizer name only when a run has several optimizers."""
    return base if optimizer is None else f"{base}/{optimizer}"


def diagnosis_tag(kind: str) -> str:
    """``lrwatch/diagnosis/<kind>``: 1 while the diagnosis is active, 0 otherwise."""
    return f"{DIAGNOSIS}/{kind}"


def action_tag(kind: str) -> str:
    """``lrwatch/action/<kind>``: the value an action set (e.g. the new lr), at the step it took effect."""
    return f"{ACTION}/{kind}"
