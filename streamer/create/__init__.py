"""Making an avatar from the page: the live recording coach, uploads and the prepare-train-export
job. Knows nothing of HTTP routes (`streamer.serve` registers them).
"""
