"""How the champion's class names line up with this spec's: every champion comparison aligns columns BY NAME.

A model's logit column i is its ``labels[i]`` (ModelConfig). The champion was trained under an earlier spec, so its
class names may come in another order, or the spec may have gained or lost classes since. Pure functions, no I/O:

* ``same`` / ``reordered``: the same set of names; the champion's columns are permuted into this spec's order and it
  is compared on every row exactly as an unchanged order would be;
* ``added``: this spec has every champion class and more; the champion is compared on the shared classes only
  (the rows whose label is a shared class, both models' logits restricted to the shared columns);
* ``incomparable``: the champion has a class this spec lacks (removed or renamed); the champion cannot be scored on
  this label space, and the gate FAILs naming the classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["same", "reordered", "added", "incomparable"]


def _names(labels: list[str]) -> str:
    return "[" + ", ".join(labels) + "]"


@dataclass(frozen=True)
class LabelSpace:
    """The champion's class names (its logit order) against the candidate's (this spec's ``labels``)."""

    champion: tuple[str, ...]
    candidate: tuple[str, ...]

    @classmethod
    def of(cls, champion: list[str], candidate: list[str]) -> LabelSpace:
        """ValueError when either list repeats a name (columns could not be told apart by name)."""
        for who, names in (("champion", champion), ("candidate", candidate)):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{who} class names repeat {dupes} (got {list(names)}): columns must have unique "
                                 "names to be aligned by name")
        return cls(tuple(champion), tuple(candidate))

    @property
    def shared(self) -> list[str]:
        """Classes both models have, in the candidate's order (the order of the aligned columns)."""
        own = set(self.champion)
        return [n for n in self.candidate if n in own]

    @property
    def added(self) -> list[str]:
        own = set(self.champion)
        return [n for n in self.candidate if n not in own]

    @property
    def removed(self) -> list[str]:
        """Champion classes this spec lacks (removed or renamed)."""
        new = set(self.candidate)
        return [n for n in self.champion if n not in new]

    @property
    def status(self) -> Status:
        if self.removed:
            return "incomparable"
        if self.added:
            return "added"
        return "same" if self.champion == self.candidate else "reordered"

    def champion_columns(self) -> list[int]:
        """Champion column of each shared class, in the candidate's order: ``logits[:, cols]`` aligns by name."""
        where = {n: i for i, n in enumerate(self.champion)}
        return [where[n] for n in self.shared]

    def candidate_columns(self) -> list[int]:
        """Candidate column of each shared class (all columns unless classes were added)."""
        own = set(self.champion)
        return [i for i, n in enumerate(self.candidate) if n in own]

    def reason(self, version: str | None) -> str:
        """One sentence for the report and the gate: what lines up, and for ``incomparable`` how to go on."""
        who = f"champion {version or '(unknown version)'} classes {_names(list(self.champion))} vs this spec's " \
              f"{_names(list(self.candidate))}"
        status = self.status
        if status == "same":
            return f"{who}: the same names in the same order"
        if status == "reordered":
            return f"{who}: the same classes in another order; the champion's logit columns are aligned by name"
        if status == "added":
            return (f"{who}: class(es) {_names(self.added)} added since the champion; the champion comparison uses "
                    f"the {len(self.shared)} shared classes {_names(self.shared)} only")
        renamed = f" (this spec's new class(es) {_names(self.added)})" if self.added else ""
        return (f"{who}: class(es) {_names(self.removed)} removed or renamed{renamed}; the champion cannot be "
                "compared on this label space. To replace it, promote this run's version through "
                "promote_<model> with override_gate: true and an override_reason (the ledger keeps who and why)")
