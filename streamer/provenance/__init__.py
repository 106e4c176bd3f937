"""Provenance: the invisible watermark, C2PA content credentials, detection, and the demo-identity
policy. Imports only `streamer.core` of `streamer`.
"""
