"""When a callback's checkpointed state belongs to the fit that is starting, shared by the callbacks.

Lightning calls a callback's ``load_state_dict`` when it restores a checkpoint, and not always at the same point:
before ``on_fit_start`` for most strategies, after it for those that restore after setup (``FSDPStrategy``,
``ModelParallelStrategy``, ``DeepSpeedStrategy``), and also for ``validate``/``test``/``predict`` with a
``ckpt_path``, where no fit follows. A new fit must start afresh (its own run), a resumed one must go on.
"""

from __future__ import annotations


class FitState:
    """Mixin (before ``Callback`` in the bases): call `_fit_starts` first thing in ``on_fit_start`` and
    `_state_loaded` at the end of ``load_state_dict``; its ``teardown`` and ``on_exception`` (after an
    exception Lightning calls no teardown) end the stage, so a callback that overrides them calls ``super()``.

    State loaded before ``on_fit_start`` is this fit's (`_fit_starts` says so); state loaded during a fit (after
    ``on_fit_start``) must be applied at once, which `_in_fit` tells ``load_state_dict``; state loaded by a stage
    that is not a fit is forgotten when that stage ends.
    """

    _in_fit = False
    _loaded_for_fit = False

    def _fit_starts(self) -> bool:
        """Whether the fit now starting resumes from the state loaded just before it."""
        resumed, self._loaded_for_fit, self._in_fit = self._loaded_for_fit, False, True
        return resumed

    def _state_loaded(self) -> None:
        self._loaded_for_fit = not self._in_fit

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._in_fit = self._loaded_for_fit = False

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._in_fit = self._loaded_for_fit = False
