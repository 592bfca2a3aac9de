"""Table-driven renaming between our parameter names and another checkpoint layout.

A `KeyMap` is a list of `Rule`s, each pairing one of our key templates with the template(s) of the other
layout. Templates name their variable parts as fields: ``{s}`` stage (counted from 0), ``{S}`` stage
(counted from 1, as the NVlabs names are), ``{b}`` block within the stage and ``{p}`` parameter or buffer
name. A rule with several foreign templates maps one of our tensors to their concatenation along dim 0:
our attention has one ``kv`` Linear whose first C output rows are the keys and the last C the values,
where HF transformers has separate ``key`` and ``value`` Linears.

Conversion is exhaustive and idempotent in both directions: a key that matches no rule is an error that
names it, an incomplete split pair is an error that names the missing half, and keys that are already in
the target layout pass through unchanged (so converting twice is the same as converting once).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import SegformerError

_FIELD_PATTERNS = {
    "s": r"(?P<s>\d+)",
    "S": r"(?P<S>[1-9]\d*)",
    "b": r"(?P<b>\d+)",
    "p": r"(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)",
}


def _compile(template: str) -> re.Pattern[str]:
    pieces = re.split(r"\{(\w)\}", template)  # literal, field, literal, field, ...
    regex = "".join(re.escape(x) if i % 2 == 0 else _FIELD_PATTERNS[x] for i, x in enumerate(pieces))
    return re.compile(regex)


def _fields(match: re.Match[str]) -> dict[str, str | int]:
    found: dict[str, str | int] = dict(match.groupdict())
    if "S" in found:
        found["s"] = int(found.pop("S")) - 1
    if "s" in found:
        found["s"] = int(found["s"])
        found["S"] = found["s"] + 1
    return found


@dataclass(frozen=True)
class Rule:
    """``ours`` <-> ``theirs`` (one template, or several that concatenate along dim 0)."""

    ours: str
    theirs: tuple[str, ...]
    _ours_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _theirs_re: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ours_re", _compile(self.ours))
        object.__setattr__(self, "_theirs_re", tuple(_compile(t) for t in self.theirs))


def rule(ours: str, *theirs: str) -> Rule:
    return Rule(ours, theirs)


BLOCK_PARTS = ("norm1", "attn.q", "attn.kv", "attn.proj", "attn.sr", "attn.norm", "norm2", "mlp.fc1",
               "mlp.dwconv", "mlp.fc2")  # fmt: skip
"""Our modules inside ``encoder.stages.{s}.blocks.{b}``, in the order the rule tables list them."""


def segformer_rules(
    patch_embed: str,
    block: str,
    stage_norm: str,
    decoder: Mapping[str, str],
    embed_names: Mapping[str, str] | None = None,
    block_names: Mapping[str, str | tuple[str, ...]] | None = None,
) -> list[Rule]:
    """The rules of a layout that holds a SegFormer under other prefixes and module names.

    `patch_embed`, `block` and `stage_norm` are where that layout keeps a stage's patch embedding, a
    block and the stage's closing norm (templates ending in a dot, e.g. ``backbone.block{S}.{b}.``);
    `embed_names` and `block_names` spell our module names inside them where the layout renames them (a
    tuple: one of our tensors split along dim 0), any other name is spelled as ours; `decoder` maps each
    of our ``decoder.*`` modules to the layout's full name (without the parameter).
    """

    def spelled(prefix: str, name: str, names: Mapping[str, str | tuple[str, ...]] | None) -> list[str]:
        theirs = (names or {}).get(name, name)
        return [f"{prefix}{t}.{{p}}" for t in ((theirs,) if isinstance(theirs, str) else theirs)]

    stage, blocks = "encoder.stages.{s}.", "encoder.stages.{s}.blocks.{b}."
    rules = [
        rule(f"{stage}patch_embed.{n}.{{p}}", *spelled(patch_embed, n, embed_names)) for n in ("proj", "norm")
    ]
    rules += [rule(f"{blocks}{n}.{{p}}", *spelled(block, n, block_names)) for n in BLOCK_PARTS]
    rules.append(rule(stage + "norm.{p}", stage_norm + "{p}"))
    return rules + [rule(f"decoder.{ours}.{{p}}", f"{theirs}.{{p}}") for ours, theirs in decoder.items()]


def without_prefix(rules: Iterable[Rule], prefix: str) -> list[Rule]:
    """The rules whose foreign names start with `prefix`, spelled without it: how a checkpoint of the
    bare encoder names its tensors (e.g. ``mit_b0.pth`` without ``backbone.``)."""
    return [
        Rule(r.ours, tuple(t.removeprefix(prefix) for t in r.theirs))
        for r in rules
        if r.theirs[0].startswith(prefix)
    ]


class KeyMap:
    """Renames state dicts between our layout and the layout called `name`.

    `rules` are used in both directions; `read_only` rules are extra spellings accepted when reading (an
    older or newer naming of the same tensors); `dropped` maps patterns of foreign keys that have no
    counterpart in our models to the reason they are dropped (e.g. an ImageNet classification head).
    """

    def __init__(
        self,
        name: str,
        rules: Iterable[Rule],
        read_only: Iterable[Rule] = (),
        dropped: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.rules = tuple(rules)
        self.read_rules = self.rules + tuple(read_only)
        self.dropped = {_compile(t): reason for t, reason in (dropped or {}).items()}

    # -- matching --
    def match_ours(self, key: str) -> tuple[Rule, dict] | None:
        for r in self.rules:
            if m := r._ours_re.fullmatch(key):
                return r, _fields(m)
        return None

    def match_theirs(self, key: str, rules: tuple[Rule, ...] | None = None) -> tuple[Rule, int, dict] | None:
        for r in self.read_rules if rules is None else rules:
            for index, pattern in enumerate(r._theirs_re):
                if m := pattern.fullmatch(key):
                    return r, index, _fields(m)
        return None

    def is_dropped(self, key: str) -> bool:
        return any(p.fullmatch(key) for p in self.dropped)

    def recognises(self, key: str) -> bool:
        """Whether `key` is spelled in this foreign layout (not ours)."""
        return self.match_theirs(key) is not None or self.is_dropped(key)

    def their_names(self, our_key: str) -> list[str]:
        """The foreign key(s) that `our_key` is written as (empty if it has no counterpart)."""
        hit = self.match_ours(our_key)
        return [] if hit is None else [t.format(**hit[1]) for t in hit[0].theirs]

    # -- conversion --
    def to_ours(self, state: Mapping[str, Tensor], source: str = "state dict") -> dict[str, Tensor]:
        """Rename a foreign state dict to our layout; keys already in our layout are kept as they are."""
        out: dict[str, Tensor] = {}
        parts: dict[str, tuple[Rule, dict, dict[int, Tensor]]] = {}
        for key, value in state.items():
            if self.match_ours(key) is not None:
                out[key] = value
                continue
            if self.is_dropped(key):
                continue
            hit = self.match_theirs(key)
            if hit is None:
                raise SegformerError(f"{source}: unmapped key {key!r} (not part of the {self.name} layout)")
            r, index, fields = hit
            ours = r.ours.format(**fields)
            if len(r.theirs) == 1:
                out[ours] = value
            else:
                parts.setdefault(ours, (r, fields, {}))[2][index] = value
        for ours, (r, fields, found) in parts.items():
            names = [t.format(**fields) for t in r.theirs]
            missing = [n for i, n in enumerate(names) if i not in found]
            if missing:
                present = [n for i, n in enumerate(names) if i in found]
                raise SegformerError(
                    f"{source}: missing key {missing[0]!r} (its counterpart {present[0]!r} is there)"
                )
            out[ours] = torch.cat([found[i] for i in range(len(names))], dim=0)
        return out

    def from_ours(self, state: Mapping[str, Tensor], source: str = "state dict") -> dict[str, Tensor]:
        """Rename our state dict to the foreign layout; keys already in that layout are kept as they are.

        Split tensors are copied, so the result can be written with safetensors (no shared storage).
        """
        out: dict[str, Tensor] = {}
        for key, value in state.items():
            if self.match_theirs(key, self.rules) is not None:
                out[key] = value
                continue
            hit = self.match_ours(key)
            if hit is None:
                raise SegformerError(f"{source}: key {key!r} has no counterpart in the {self.name} layout")
            r, fields = hit
            names = [t.format(**fields) for t in r.theirs]
            if len(names) == 1:
                out[names[0]] = value
                continue
            if value.shape[0] % len(names):
                raise SegformerError(
                    f"{source}: {key!r} has {value.shape[0]} rows, not divisible into {len(names)} parts"
                )
            for name, chunk in zip(names, value.chunk(len(names), dim=0), strict=True):
                out[name] = chunk.clone()
        return out
