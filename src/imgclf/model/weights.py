"""Whether a state_dict fits a network: one check for pretrained weights, resumed and exported checkpoints."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from imgclf.errors import UserError


class WeightsMisfit(UserError):
    """A state_dict that does not fit the network it is loaded into."""


def misfit(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str:
    """'' when `given` holds exactly the tensors of `expected`, each of the same shape; otherwise what differs
    (counts of missing, unexpected and misshapen tensors, with a few names), for an error message."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    misshapen = [k for k in expected if k in given and given[k].shape != expected[k].shape]
    if not (missing or unexpected or misshapen):
        return ""
    return (f"{len(missing)} missing, {len(unexpected)} unexpected and {len(misshapen)} misshapen tensors "
            f"(e.g. {(missing or unexpected or misshapen)[:3]})")
