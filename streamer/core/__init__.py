"""The lowest layer: the frame, clocks and pacing, queues, metrics and figures, frame-id stamps,
logging and the aiortc settings shared by every WebRTC user. Imports nothing else of `streamer`.
"""
