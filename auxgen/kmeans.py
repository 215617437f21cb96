"""The clustering baseline of the paper, without ImageNet weights: k-means inside each primary class
on the features of a single-task network, frozen as hard auxiliary labels."""

from __future__ import annotations

import numpy as np
import torch

from auxgen.data import Split
from auxgen.hierarchy import Hierarchy
from auxgen.models import MultiTaskNet


@torch.inference_mode()
def features(model: MultiTaskNet, split: Split, device: torch.device, batch_size: int = 500) -> np.ndarray:
    """Backbone features of a split (eval mode, no augmentation), float64 [N, F]."""
    was = model.training
    model.eval()
    out = [model.backbone(model.normalize(split.images[i:i + batch_size].to(device))).double().cpu()
           for i in range(0, len(split), batch_size)]
    model.train(was)
    return torch.cat(out).numpy()


def kmeans_labels(train_feats: np.ndarray, train_y: np.ndarray, hier: Hierarchy, seed: int,
                  test_feats: np.ndarray | None = None, test_y: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """psi[i] k-means clusters inside each primary class i; auxiliary labels in that class's block.

    Test samples (optional) take their class's nearest centroid, so their labels can be compared
    with human labels. Features are standardised per class so no feature scale dominates.
    """
    from sklearn.cluster import KMeans

    train_out = np.empty(len(train_y), dtype=np.int64)
    test_out = None if test_feats is None else np.empty(len(test_y), dtype=np.int64)
    for c, (k, offset) in enumerate(zip(hier.psi, hier.offsets, strict=True)):
        rows = np.flatnonzero(train_y == c)
        f = train_feats[rows]
        mu, sd = f.mean(0), f.std(0) + 1e-8
        k_eff = min(k, len(rows))
        if k_eff <= 1:
            train_out[rows] = offset
            cluster = None
        else:
            cluster = KMeans(n_clusters=k_eff, n_init=10, random_state=seed + c).fit((f - mu) / sd)
            train_out[rows] = offset + cluster.labels_
        if test_out is not None:
            t_rows = np.flatnonzero(test_y == c)
            test_out[t_rows] = offset if cluster is None or not len(t_rows) else \
                offset + cluster.predict((test_feats[t_rows] - mu) / sd)
    return train_out, test_out
