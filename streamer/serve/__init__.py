"""`avatarcam serve` and `demo`: config, the service (avatars, sessions, peers, control), its HTTP
face, security, capacity and the demo defaults.
"""
