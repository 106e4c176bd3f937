"""The live pipeline: sources, tracking, engine, compose, sinks, WebRTC, virtual camera, metrics."""
