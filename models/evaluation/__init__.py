"""Evaluation: held-out and cross-reenactment metrics, the ablation runner and the HTML
report; the metric networks live in metrics/."""
