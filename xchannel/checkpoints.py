"""Loading trained networks back: xchannel checkpoints and the authors' released colorizer weights.

Every file is read with ``torch.load(..., weights_only=True)`` (:func:`xchannel.utils.io.safe_torch_load`).
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from xchannel.errors import UserError
from xchannel.utils.io import safe_torch_load


def is_official_eccv16(state: object) -> bool:
    return isinstance(state, dict) and "model_out.weight" in state and "model1.0.weight" in state


def load_network(path: str | Path, state: object = None) -> tuple[nn.Module, dict]:
    """A network from an xchannel checkpoint (training or bare model) or the released ECCV16 colorizer.

    Returns ``(model, info)`` with the model in eval mode; ``info`` has ``source`` ("xchannel" or
    "official_eccv16"), ``config`` (the training run's config dict, when there is one) and ``loss_kind``.
    ``state``: the file's content when it is already loaded.
    """
    path = Path(path)
    state = safe_torch_load(path) if state is None else state
    if is_official_eccv16(state):
        from xchannel.convert import from_official_eccv16

        return from_official_eccv16(state).eval(), {"source": "official_eccv16", "config": {},
                                                    "loss_kind": "classification"}
    from xchannel.models import build_model, model_from_checkpoint
    from xchannel.pretext.colorization import set_regression_head

    if not isinstance(state, dict) or "state_dict" not in state:
        raise UserError(f"{path}: neither an xchannel checkpoint (keys 'model', 'hparams', 'state_dict') nor the "
                        f"released colorization weights (keys 'model1.0.weight', ..., 'model_out.weight')")
    cfg = state.get("config", {}) if isinstance(state.get("config"), dict) else {}
    # colorization's options: under pretext: (today) or at the top level (checkpoints written before)
    kind = ((cfg.get("pretext") or {}).get("loss") or cfg.get("loss") or {}).get("kind", "classification")
    if kind != "l2":
        return model_from_checkpoint(state, str(path)).eval(), {"source": "xchannel", "config": cfg,
                                                                 "loss_kind": kind, "step": state.get("step")}
    model = build_model(state["model"], **state["hparams"])
    set_regression_head(model)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        raise UserError(f"{path}: weights do not fit {state['model']} {state['hparams']}: {err}") from err
    return model.eval(), {"source": "xchannel", "config": cfg, "loss_kind": kind, "step": state.get("step")}
