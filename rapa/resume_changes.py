"""How the solver and the training net of a resumed run differ from those of the run that
wrote its snapshot (SolverState.solver, .train_net), in words, for the one line the solver
says on resuming: Caffe resumes with whatever solver it is given, often on purpose (a lower
rate, a longer run), but a changed random_seed or batch_size otherwise passes unnoticed."""
from __future__ import annotations

import math

from google.protobuf.message import Message

from .proto import pb

_SHOWN = 6  # names listed before "and N more"


def _value(field, value, digits: int = 7) -> str:
    if field.enum_type is not None:
        return field.enum_type.values_by_number[value].name
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value).lower() if isinstance(value, bool) else str(value)


def message_changes(before: Message, after: Message) -> list[str]:
    """The top-level fields whose values differ: 'name old -> new' for numbers, strings and
    enums (repeated ones as lists), the name alone for messages."""
    out = []
    for field in before.DESCRIPTOR.fields:
        old, new = getattr(before, field.name), getattr(after, field.name)
        if old == new or (isinstance(old, float) and math.isnan(old) and math.isnan(new)):
            continue
        if field.message_type is not None:
            out.append(field.name)
        elif field.is_repeated:
            show = lambda values: "[" + ", ".join(_value(field, v) for v in values) + "]"  # noqa: E731
            out.append(f"{field.name} {show(old)} -> {show(new)}")
        else:
            # float32 values 7 digits cannot tell apart: 9 can
            digits = 7 if _value(field, old) != _value(field, new) else 9
            out.append(f"{field.name} {_value(field, old, digits)} -> "
                       f"{_value(field, new, digits)}")
    return out


def _names(names: list[str]) -> str:
    more = len(names) - _SHOWN
    return ", ".join(names[:_SHOWN]) + (f" and {more} more" if more > 0 else "")


def _by_name(net: pb.NetParameter) -> dict[str, Message]:
    """Layers by name; a name given twice (Caffe's TRAIN and TEST Data layers often share
    one) is told apart by its place among them: 'data', 'data #2'."""
    out, seen = {}, {}
    for layer in net.layer:
        k = seen[layer.name] = seen.get(layer.name, 0) + 1
        out[layer.name if k == 1 else f"{layer.name} #{k}"] = layer
    return out


def net_changes(before: pb.NetParameter, after: pb.NetParameter) -> list[str]:
    """Layers changed (by name: any field), added and removed, and the net's own fields."""
    old, new = _by_name(before), _by_name(after)
    out = []
    changed = [n for n in new if n in old and old[n] != new[n]]
    if len(changed) == 1:  # which of its fields (none: a default written out, or left out)
        fields = message_changes(old[changed[0]], new[changed[0]])
        out.append(f"layer {changed[0]} changed: " + (
            ", ".join(fields) if fields else "a field's default written out or left out"))
    elif changed:
        out.append(f"layers {_names(changed)} changed")
    for what, names in (("added", [n for n in new if n not in old]),
                        ("removed", [n for n in old if n not in new])):
        if names:
            out.append(f"layer{'s' if len(names) > 1 else ''} {_names(names)} {what}")
    own_before, own_after = pb.NetParameter(), pb.NetParameter()
    own_before.CopyFrom(before)
    own_after.CopyFrom(after)
    del own_before.layer[:], own_after.layer[:]
    out += message_changes(own_before, own_after)
    return out


def resume_changes(state: pb.SolverState, solver: pb.SolverParameter,
                   train_net: pb.NetParameter) -> list[str]:
    """What differs between the snapshot's run and this one (empty for a state written before
    these were kept). random_seed: the snapshot's seed is the one the run goes on with."""
    out = []
    # A training net embedded in the solver is compared below, layer by layer, as "net: ...".
    embedded = {"net_param", "train_net_param"} if state.HasField("train_net") else set()
    if state.HasField("solver"):
        for change in message_changes(state.solver, solver):
            if change in embedded:
                continue
            if change.startswith("random_seed ") and state.HasField("seed"):
                change += f" (the run keeps its seed, {state.seed})"
            out.append(change)
    if state.HasField("train_net"):
        out += [f"net: {change}" for change in net_changes(state.train_net, train_net)]
    return out
