"""Names the cluster's parts agree on (no Ray import: `avatarcam node` and the CLI use them)."""

RESOURCE = "avatar_streams"
"""The custom resource each node advertises (how many avatar streams it holds) and each
session reserves one of."""
NAMESPACE = "avatarcam"
PREFIX = "avatar-"
"""Session actors are named `avatar-<name>` in the `avatarcam` namespace, so any gateway that
connects to the cluster finds them."""
