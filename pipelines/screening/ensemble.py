"""Several trained networks as one: the mean of their logits (e.g. the models of a cross-validation's folds).

nnU-Net predicts with the five networks of its folds and averages them; users who retrain on LUNA16's 10-fold
split get one network per fold too. :func:`load_network_weights` takes one checkpoint (the network itself,
weights loaded) or several (a :class:`MeanLogits` of copies of the network, one checkpoint each). Everything
downstream (lung-gated sliding window, mirroring, stitching, the logit temperature) sees one network with one
logit map, so ensembles work on every path with no special cases. Logits are averaged, not probabilities: the
sliding window stitches logits, and the mean logit is the (normalised) geometric mean of the members' odds.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import torch

PathLike = str | os.PathLike[str]


class MeanLogits(torch.nn.Module):
    """Mean of the members' outputs (logits of one shape)."""

    def __init__(self, members: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member network")
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.members[0](x)
        for member in self.members[1:]:
            out = out + member(x)
        return out / len(self.members)


def weight_files(weights: PathLike | Sequence[PathLike] | None) -> list[Path]:
    """One path, several, or None -> a list of paths (empty for None or "")."""
    if weights is None or weights == "":
        return []
    if isinstance(weights, str | os.PathLike):
        return [Path(weights)]
    return [Path(w) for w in weights]


def load_network_weights(
    network: torch.nn.Module, weights: PathLike | Sequence[PathLike] | None
) -> torch.nn.Module:
    """``network`` with its checkpoint loaded, or a :class:`MeanLogits` of copies for several checkpoints.

    Every file is loaded with :func:`pipelines.screening.inference.load_weights` (``weights_only=True``; a bad file
    raises :class:`pipelines.screening.inference.CheckpointError` naming it). No weights: the network as it is.
    """
    from pipelines.screening.inference import load_weights

    files = weight_files(weights)
    if len(files) <= 1:
        return load_weights(network, files[0]) if files else network
    members = [load_weights(copy.deepcopy(network), f) for f in files]
    device = next(network.parameters()).device
    return MeanLogits(members).to(device).eval()
