"""Reported values and their protocols: how a published number was made, and
ours read under the same protocol.

Each row of the reported-results CSV (``config/reported_results.csv``) says
how its checkpoint was chosen and where it was scored:

- ``ckpt_rule``: ``final`` (the last weights), ``best`` (the best score on
  ``select_split`` during training), ``fixed_iter:N`` (the weights of
  iteration N) or ``unknown``;
- ``select_split``: the split ``best`` was chosen on (``val``, ``test``,
  ``valtest``), ``none`` for the others, or ``unknown``;
- ``eval_split``: the split the number was scored on (``val``, ``test``,
  ``valtest``: validation and test cases together) or ``unknown``; ``eval_n``
  how many volumes; ``postproc``: ``none``, ``lcc`` (largest connected
  component kept) or ``unknown``;
- ``value_origin`` and ``verified_by``: where the number comes from (its own
  paper, README or code release, or quoted by someone else) and what it was
  checked against; ``evidence`` (repository@commit file:line, or issue) and
  ``note``.

Our side of a row comes from a run's protocol analysis
(``eval/protocols/summary.json``: every snapshot scored on the validation
and test cases), so final@val, best(val)@test, best(valtest)@valtest and the
rest are all read from the same scores. A number whose protocol is unknown,
or that was post-processed where ours is not, gets no verdict.
No torch here: the report reads it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import DataError

CKPT_RULES = ("final", "best", "unknown")        # and fixed_iter:N
SELECT_SPLITS = ("none", "val", "test", "valtest", "unknown")
EVAL_SPLITS = ("val", "test", "valtest", "unknown")
POSTPROCS = ("none", "lcc", "unknown")
COLUMNS = ("method", "dataset", "labeled", "dice", "jaccard", "hd95", "asd", "units", "source", "ckpt_rule",
           "select_split", "eval_split", "eval_n", "postproc", "value_origin", "verified_by", "evidence", "note")
# best on a split -> the protocol of crossmatch.protocols that makes the same choice on our runs
BEST_ON = {"val": "best_val", "valtest": "valtest", "test": "best_test"}


@dataclass(frozen=True)
class Protocol:
    """How one reported value was made."""
    ckpt_rule: str
    select_split: str
    eval_split: str
    eval_n: str = ""
    postproc: str = "none"

    @property
    def fixed_iteration(self) -> int | None:
        return int(self.ckpt_rule.split(":", 1)[1]) if self.ckpt_rule.startswith("fixed_iter:") else None

    @property
    def known(self) -> bool:
        """Enough is known to read ours the same way."""
        if self.eval_split == "unknown" or self.ckpt_rule == "unknown":
            return False
        return self.ckpt_rule != "best" or self.select_split in BEST_ON

    @property
    def selects_on_scored_split(self) -> bool:
        """The checkpoint was chosen on (part of) the cases it is scored on: optimistic."""
        if self.ckpt_rule != "best" or self.select_split not in BEST_ON:
            return False
        overlap = {"val": {"val"}, "test": {"test"}, "valtest": {"val", "test"}}
        return bool(overlap[self.select_split] & overlap.get(self.eval_split, set()))

    def label(self) -> str:
        """``final@val``, ``best(val)@test``, ``iter 6000@test``, ``unknown``..."""
        if self.ckpt_rule == "unknown" and self.eval_split == "unknown":
            return "unknown"
        rule = {"best": f"best({self.select_split})", "final": "final"}.get(
            self.ckpt_rule, f"iter {self.fixed_iteration}" if self.fixed_iteration is not None else self.ckpt_rule)
        return f"{rule}@{self.eval_split}"

    def describe(self) -> str:
        """The label in words, with the case count, post-processing and a warning
        where the selection read the scored cases."""
        parts = [self.label()]
        if self.eval_n:
            parts.append(self.eval_n)
        if self.postproc not in ("none", ""):
            parts.append(f"post-processing: {self.postproc}")
        if self.selects_on_scored_split:
            parts.append("selected on the scored split")
        return "; ".join(parts)


def protocol_of(row: dict[str, str], where: str = "reported results") -> Protocol:
    """The protocol columns of one CSV row, checked."""
    p = Protocol(row.get("ckpt_rule") or "unknown", row.get("select_split") or "unknown",
                 row.get("eval_split") or "unknown", row.get("eval_n", ""), row.get("postproc") or "unknown")
    name = f"{where}: {row.get('method')}/{row.get('dataset')}/{row.get('labeled')}"
    if p.ckpt_rule not in CKPT_RULES and not (p.ckpt_rule.startswith("fixed_iter:")
                                              and p.ckpt_rule.split(":", 1)[1].isdigit()):
        raise DataError(f"{name}: ckpt_rule {p.ckpt_rule!r} is not one of {CKPT_RULES} or fixed_iter:N")
    for key, value, allowed in (("select_split", p.select_split, SELECT_SPLITS),
                                ("eval_split", p.eval_split, EVAL_SPLITS), ("postproc", p.postproc, POSTPROCS)):
        if value not in allowed:
            raise DataError(f"{name}: {key} {value!r} is not one of {allowed}")
    return p


def origin_known(row: dict[str, str]) -> bool:
    """False for a number of unknown origin: one its quoting source marks so, or
    one only quoted or re-run by others and not verified against any source."""
    origin = row.get("value_origin") or ""
    if "origin unknown" in origin or "unknown origin" in origin:
        return False
    return not (origin.startswith(("quoted_in", "rerun_by")) and (row.get("verified_by") or "none") == "none")


def our_score(summary: dict[str, Any], protocol: Protocol) -> float | None:
    """One run's mean Dice (fraction) under ``protocol``, from its protocol summary;
    None where the protocol is unknown or the run has no snapshot it needs."""
    if not protocol.known:
        return None
    protos = summary["protocols"]
    if protocol.fixed_iteration is not None:
        curve = summary["curve"]
        if protocol.fixed_iteration not in curve["iteration"]:
            return None
        i = curve["iteration"].index(protocol.fixed_iteration)
        val, test = curve["val_dice"][i], curve["test_dice"][i]
    else:
        name = "final" if protocol.ckpt_rule == "final" else BEST_ON[protocol.select_split]
        val, test = protos[name]["val_dice"], protos[name]["test_dice"]
    if protocol.eval_split == "val":
        return None if val is None or math.isnan(val) else float(val)
    if protocol.eval_split == "test":
        return float(test)
    n_val, n_test = int(summary["n_val_cases"]), int(summary["n_test_cases"])
    return float((n_val * val + n_test * test) / (n_val + n_test))


def verdict(protocol: Protocol, diff: float | None, tolerance: float, reason: str = "") -> str:
    """The reproduction verdict of one reported value beside one of our means (Dice points)."""
    if not protocol.known:
        return "not comparable: protocol not stated"
    if protocol.postproc != "none":
        return f"not comparable: post-processing {protocol.postproc} (ours: none)"
    if reason:
        return f"not comparable: {reason}"
    if diff is None:
        return "not run here"
    return "reproduced" if abs(diff) <= tolerance else "not reproduced"
