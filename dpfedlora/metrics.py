"""Classification metrics from predictions and true labels (numpy only)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["classification_metrics"]


def classification_metrics(pred: np.ndarray, true: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean per-class recall) and macro-F1, plus the majority
    baseline (the accuracy of always predicting the most frequent class)."""
    acc = float(np.mean(pred == true)) if len(true) else math.nan
    recalls, f1s = [], []
    for c in range(num_labels):
        tp = np.sum((pred == c) & (true == c))
        support = np.sum(true == c)
        predicted = np.sum(pred == c)
        if support:
            recalls.append(tp / support)
        prec = tp / predicted if predicted else 0.0
        rec = tp / support if support else 0.0
        if support or predicted:
            f1s.append(0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec))
    majority = (
        float(np.max(np.bincount(true, minlength=num_labels)) / len(true)) if len(true) else 0
    )
    return {
        "accuracy": acc,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else math.nan,
        "macro_f1": float(np.mean(f1s)) if f1s else math.nan,
        "majority_baseline": majority,
    }
