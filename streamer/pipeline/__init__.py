"""The live pipeline: one avatar session (track, render, infer, compose, publish), its idle pose
and the engines sessions share. Knows nothing of HTTP or the serve command.
"""
