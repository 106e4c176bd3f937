"""The cluster's control plane (issue 23): each avatar session is a Ray actor that holds the
same `AvatarSession` serve runs, placed by a custom resource (`avatar_streams`) that each node
advertises, and restarted elsewhere when its node dies.

Ray is an optional extra (`pip install .[cluster]`): only the modules of this package import
it, and nothing outside them imports this package at module level, so `avatarcam serve` and
`make demo` run without it.
"""
