"""Pipeline-parallel layer splits: the one rule for how decoder layers spread over stages.

``train.pp_layers`` (``--pp-layers``) gives layers per stage for an uneven split; without it
``pp`` must divide the layers. Conversion, training, megatron's layout and planning all ask
this module, so they cannot disagree. Standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmbuild.errors import UserError


def check_split(
    num_layers: int | None,
    pp: int,
    pp_layers: Sequence[int] | None = None,
    *,
    field: str = "--pp-layers",
    pp_field: str = "--pp",
    where: str | None = None,
) -> list[int]:
    """Layers per pipeline stage (one entry per stage, each >= 1, summing to ``num_layers``),
    or one UserError line naming ``field`` / ``pp_field``. ``num_layers`` None (not known
    yet): only the split's own shape is checked, and the given split (or []) is returned."""
    if pp < 1:
        raise UserError(f"pp={pp} must be >= 1", path=where, field=pp_field)
    if num_layers is not None and pp > num_layers:
        raise UserError(
            f"pp={pp} is more than the model's {num_layers} layers; every pipeline stage needs "
            f"at least one layer, so use pp <= {num_layers}",
            path=where,
            field=pp_field,
        )
    if pp_layers is None:
        if num_layers is None:
            return []
        if num_layers % pp:
            raise UserError(
                f"pp={pp} does not divide the model's {num_layers} layers; set {field} (layers "
                f"per stage, e.g. {example_split(num_layers, pp)}) or another pp",
                path=where,
                field=pp_field,
            )
        return [num_layers // pp] * pp
    layers = [int(x) for x in pp_layers]
    given = ",".join(str(x) for x in layers)
    if len(layers) != pp:
        raise UserError(
            f"[{given}] has {len(layers)} stages but {pp_field} is {pp}; give one layer count "
            f"per pipeline stage (or set {pp_field} to match)",
            path=where,
            field=field,
        )
    if min(layers) < 1:
        raise UserError(
            f"[{given}]: every pipeline stage needs at least 1 layer", path=where, field=field
        )
    if num_layers is not None and sum(layers) != num_layers:
        raise UserError(
            f"[{given}] sums to {sum(layers)} but the model has {num_layers} layers; make the "
            f"layer counts sum to {num_layers} (e.g. {example_split(num_layers, pp)})",
            path=where,
            field=field,
        )
    return layers


def stage_of_layer(num_layers: int, pp: int, pp_layers: Sequence[int] | None = None) -> list[int]:
    """The pipeline stage of each decoder layer, in order."""
    counts = check_split(num_layers, pp, pp_layers)
    return [s for s, n in enumerate(counts) for _ in range(n)]


def example_split(n: int, pp: int) -> str:
    """A split of ``n >= pp`` layers over ``pp`` stages, the larger stages last, e.g. 4 over
    3 -> [1,1,2]."""
    base, extra = divmod(n, pp)
    return "[" + ",".join(str(base + (i >= pp - extra)) for i in range(pp)) + "]"
