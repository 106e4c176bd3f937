"""Per-frame image stages between the engine and the sinks: compose (background, badge, watermark),
framing (the webcam-shaped picture) and the status card.
"""
